import Foundation

/// Trainable parameters of a method in ONE arena, with gradients and AdamW moments in the same
/// layout (llm.c style): the optimizer is one flat loop per contiguous trainable range, and a
/// data-parallel gradient sync is one all-reduce over `grads`.
///
/// Tensors are added when a method is built or a domain arrives (a gate row, a head); adding
/// reallocates, so pointers must be fetched again afterwards — never inside a step.
public final class ParameterStore {
    public struct Tensor: Codable, Equatable, Sendable {
        public let name: String
        public let shape: [Int]
        public let offset: Int
        public var count: Int { shape.reduce(1, *) }
        /// adapter, gate, head, router, lora, base, ...
        public let group: String
        public var trainable: Bool
        /// Decoupled weight decay applies only where true (not to biases, gates, LayerNorm).
        public var decay: Bool
        /// Rows (first dimension) the optimizer may update; nil = all. Lets a growing table
        /// (gates, router output) train only its newest rows while earlier rows stay frozen.
        public var trainableRows: Range<Int>? = nil
        public var rowSize: Int { shape.count > 1 ? shape.dropFirst().reduce(1, *) : 1 }
    }

    public private(set) var tensors: [Tensor] = []
    private var index: [String: Int] = [:]
    public private(set) var values = FloatArena(count: 0)
    public private(set) var grads = FloatArena(count: 0)
    public private(set) var moment1 = FloatArena(count: 0)
    public private(set) var moment2 = FloatArena(count: 0)
    public var count: Int { tensors.last.map { $0.offset + $0.count } ?? 0 }

    public init() {}

    /// Adds a tensor initialised by `initializer(i)`; returns its index.
    @discardableResult
    public func add(_ name: String, shape: [Int], group: String, trainable: Bool = true, decay: Bool = false,
                    initializer: (Int) -> Float) -> Int {
        precondition(index[name] == nil, "duplicate parameter \(name)")
        let n = shape.reduce(1, *)
        let t = Tensor(name: name, shape: shape, offset: count, group: group, trainable: trainable, decay: decay)
        grow(to: count + n)
        for i in 0..<n { values.base[t.offset + i] = initializer(i) }
        tensors.append(t)
        index[name] = tensors.count - 1
        return tensors.count - 1
    }

    private func grow(to newCount: Int) {
        func enlarged(_ a: FloatArena) -> FloatArena {
            let b = FloatArena(count: newCount)
            if a.count > 0 { b.base.update(from: a.base, count: a.count) }
            return b
        }
        values = enlarged(values)
        grads = enlarged(grads)
        moment1 = enlarged(moment1)
        moment2 = enlarged(moment2)
    }

    /// Appends `rows` rows to a tensor (a gate row or router output for a new domain), shifting
    /// the tensors after it; values, gradients and moments keep their contents.
    public func appendRows(_ name: String, rows: Int, initializer: (Int) -> Float) {
        guard let ti = index[name] else { preconditionFailure("unknown parameter \(name)") }
        let old = tensors[ti]
        let extra = rows * old.rowSize
        let newCount = count + extra
        let insertAt = old.offset + old.count
        func rebuilt(_ a: FloatArena, fill: (Int) -> Float) -> FloatArena {
            let b = FloatArena(count: newCount)
            b.base.update(from: a.base, count: insertAt)
            for i in 0..<extra { b.base[insertAt + i] = fill(i) }
            (b.base + insertAt + extra).update(from: a.base + insertAt, count: a.count - insertAt)
            return b
        }
        values = rebuilt(values, fill: initializer)
        grads = rebuilt(grads) { _ in 0 }
        moment1 = rebuilt(moment1) { _ in 0 }
        moment2 = rebuilt(moment2) { _ in 0 }
        var shape = old.shape
        shape[0] += rows
        tensors[ti] = Tensor(name: old.name, shape: shape, offset: old.offset, group: old.group,
                             trainable: old.trainable, decay: old.decay, trainableRows: old.trainableRows)
        for j in (ti + 1)..<tensors.count {
            let t = tensors[j]
            tensors[j] = Tensor(name: t.name, shape: t.shape, offset: t.offset + extra, group: t.group,
                                trainable: t.trainable, decay: t.decay, trainableRows: t.trainableRows)
        }
    }

    public func setTrainableRows(_ name: String, _ rows: Range<Int>?) {
        guard let ti = index[name] else { preconditionFailure("unknown parameter \(name)") }
        tensors[ti].trainableRows = rows
    }

    /// Contiguous (offset, count, decay) ranges the optimizer updates, for tensors passing `filter`.
    public func trainableSegments(where filter: (Tensor) -> Bool = { _ in true }) -> [(offset: Int, count: Int, decay: Bool)] {
        var out: [(Int, Int, Bool)] = []
        for t in tensors where t.trainable && filter(t) {
            if let r = t.trainableRows {
                guard !r.isEmpty else { continue }
                out.append((t.offset + r.lowerBound * t.rowSize, r.count * t.rowSize, t.decay))
            } else {
                out.append((t.offset, t.count, t.decay))
            }
        }
        return out
    }

    public func contains(_ name: String) -> Bool { index[name] != nil }
    public func tensor(_ name: String) -> Tensor {
        guard let i = index[name] else { preconditionFailure("unknown parameter \(name)") }
        return tensors[i]
    }
    // Raw views for the kernels (internal: valid until the next structural change).
    func value(_ name: String) -> UnsafeMutablePointer<Float> { values.base + tensor(name).offset }
    func grad(_ name: String) -> UnsafeMutablePointer<Float> { grads.base + tensor(name).offset }
    /// The gradient pointer when the tensor trains, nil when frozen (the kernels skip its GEMM).
    func gradIfTrainable(_ name: String) -> UnsafeMutablePointer<Float>? {
        let t = tensor(name)
        return t.trainable ? grads.base + t.offset : nil
    }
    /// Calls `body` with a tensor's values, mutable in place (valid only inside `body`).
    public func withValues<R>(_ name: String, _ body: (UnsafeMutableBufferPointer<Float>) throws -> R) rethrows -> R {
        let t = tensor(name)
        return try body(UnsafeMutableBufferPointer(start: values.base + t.offset, count: t.count))
    }

    /// Copies of the whole values and both moments (checkpoints, snapshots).
    public func withArrays<R>(_ body: (_ values: [Float], _ moment1: [Float], _ moment2: [Float]) throws -> R) rethrows -> R {
        try body(Array(values.buffer), Array(moment1.buffer), Array(moment2.buffer))
    }

    public func array(_ name: String) -> [Float] {
        let t = tensor(name)
        return Array(UnsafeBufferPointer(start: values.base + t.offset, count: t.count))
    }

    public func setTrainable(_ trainable: Bool, where predicate: (Tensor) -> Bool) {
        for i in tensors.indices where predicate(tensors[i]) { tensors[i].trainable = trainable }
    }

    /// Parameters the optimizer updates now.
    public var trainableCount: Int { trainableSegments().reduce(0) { $0 + $1.count } }
    public func count(group: String) -> Int { tensors.filter { $0.group == group }.reduce(0) { $0 + $1.count } }

    public func zeroGrads() { grads.zero() }

    /// Restores values and moments (checkpoint resume); the layout must match exactly.
    public func load(values v: [Float], moment1 m1: [Float], moment2 m2: [Float]) {
        precondition(v.count == count && m1.count == count && m2.count == count)
        v.withUnsafeBufferPointer { values.base.update(from: $0.baseAddress!, count: count) }
        m1.withUnsafeBufferPointer { moment1.base.update(from: $0.baseAddress!, count: count) }
        m2.withUnsafeBufferPointer { moment2.base.update(from: $0.baseAddress!, count: count) }
    }
}
