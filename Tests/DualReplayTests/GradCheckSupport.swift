import Foundation
import Testing
import CKernels

// The finite-difference harness of the kernel tests. A check defines a scalar loss of the kernel's
// outputs (usually L = Σ w ⊙ out with fixed random w), gets the analytic gradient from the
// backward kernel (fed dout = w), and compares it entry by entry with central differences of the
// same loss, accumulated in Double.

/// C memory for one kernel argument: a stable pointer for the duration of a test, freed in deinit.
final class HostBuffer<Element> {
    let pointer: UnsafeMutablePointer<Element>
    let count: Int

    init(_ values: [Element]) {
        count = values.count
        pointer = .allocate(capacity: max(1, values.count))
        pointer.initialize(from: values, count: values.count)
    }

    convenience init(repeating value: Element, count: Int) {
        self.init([Element](repeating: value, count: count))
    }

    var array: [Element] { Array(UnsafeBufferPointer(start: pointer, count: count)) }

    deinit {
        pointer.deinitialize(count: count)
        pointer.deallocate()
    }
}

extension HostBuffer where Element == Float {
    convenience init(zeros count: Int) { self.init(repeating: 0, count: count) }
}

/// Central-difference gradient of `loss` with respect to the array at `key` of `params`.
/// The step actually taken (x ± h rounded to Float) is the one divided by.
func numericGradient<Params>(
    _ params: Params, _ key: WritableKeyPath<Params, [Float]>, h: Float = 1e-3,
    _ loss: (Params) -> Double
) -> [Double] {
    var p = params
    let n = p[keyPath: key].count
    var grad = [Double](repeating: 0, count: n)
    for i in 0..<n {
        let x0 = p[keyPath: key][i]
        let xPlus = x0 + h, xMinus = x0 - h
        p[keyPath: key][i] = xPlus
        let lPlus = loss(p)
        p[keyPath: key][i] = xMinus
        let lMinus = loss(p)
        p[keyPath: key][i] = x0
        grad[i] = (lPlus - lMinus) / (Double(xPlus) - Double(xMinus))
    }
    return grad
}

/// The gradient error of one entry: |a - n| / max(1, |a|, |n|).
func gradientError(_ analytic: Double, _ numeric: Double) -> Double {
    abs(analytic - numeric) / max(1, abs(analytic), abs(numeric))
}

/// Expects every entry of `analytic` to match `numeric` within `tolerance` (gradientError).
func expectGradient(
    _ name: String, analytic: [Float], numeric: [Double], tolerance: Double = 1e-3,
    sourceLocation: SourceLocation = #_sourceLocation
) {
    #expect(analytic.count == numeric.count, "\(name): \(analytic.count) analytic vs \(numeric.count) numeric entries",
            sourceLocation: sourceLocation)
    #expect(!analytic.isEmpty, "\(name): empty gradient", sourceLocation: sourceLocation)
    var worst = 0.0, worstIndex = 0
    for i in 0..<min(analytic.count, numeric.count) {
        let e = gradientError(Double(analytic[i]), numeric[i])
        if e > worst { worst = e; worstIndex = i }
    }
    let detail = worstIndex < min(analytic.count, numeric.count)
        ? "analytic \(analytic[worstIndex]) numeric \(numeric[worstIndex])" : ""
    #expect(worst <= tolerance, "\(name): error \(worst) at \(worstIndex) (\(detail))",
            sourceLocation: sourceLocation)
}

/// Σ w ⊙ x in Double: the scalar every "L = Σ w ⊙ out" check differentiates.
func weightedSum(_ x: [Float], _ w: [Float]) -> Double {
    precondition(x.count == w.count)
    var s = 0.0
    for i in 0..<x.count { s += Double(x[i]) * Double(w[i]) }
    return s
}

/// max |a - b| over the entries, for comparing a kernel with a Double reference.
func maxAbsDifference(_ a: [Float], _ b: [Double]) -> Double {
    precondition(a.count == b.count)
    var m = 0.0
    for i in 0..<a.count { m = max(m, abs(Double(a[i]) - b[i])) }
    return m
}

/// Exact (erf) GELU in Double, for the references.
func geluReference(_ x: Double) -> Double { 0.5 * x * (1 + erf(x / 2.0.squareRoot())) }

/// Packed-sequence offsets for the given lengths: [0, l0, l0+l1, ...].
func cuSeqlens(_ lengths: [Int]) -> [Int64] {
    var cu: [Int64] = [0]
    for l in lengths { cu.append(cu.last! + Int64(l)) }
    return cu
}
