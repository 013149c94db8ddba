import Foundation

/// A method against a baseline over the orderings both ran: the differences of one metric per
/// ordering seed, a paired t-test and an exact sign test on them.
///
/// Why these two: the unit of replication of a continual-learning comparison is the domain
/// ordering (the seed's "5 random domain orderings"), and both methods ran the same orderings, so
/// the tests are paired by ordering seed. The t-test uses the size of the differences but assumes
/// they are roughly normal; the sign test assumes nothing but their sign, and with n orderings its
/// smallest two-sided p is 2/2ⁿ (0.0625 at n = 5: it can never reject at 0.05 with 5 orderings). A
/// paired bootstrap over test utterances would need every utterance's prediction in the results,
/// and it measures the noise of the test set, not of the ordering.
public struct PairedComparison: Codable, Equatable, Sendable {
    public enum Metric: String, Codable, Sendable, CaseIterable {
        case routedAverageF1 = "routed average F1"
        case oracleAverageF1 = "oracle average F1"
        case routedBackwardTransfer = "routed BWT"

        func value(_ r: RunResult) -> Double {
            switch self {
            case .routedAverageF1: return r.routed.averageF1
            case .oracleAverageF1: return r.oracle.averageF1
            case .routedBackwardTransfer: return r.routed.backwardTransfer
            }
        }
    }

    public var method: String
    public var baseline: String
    public var metric: Metric
    /// The ordering seeds both ran, and method − baseline on each (0..1 scale).
    public var orderingSeeds: [UInt64]
    public var differences: [Double]
    public var meanDifference: Double
    /// Two-sided paired t-test (nil with fewer than two orderings, or when every difference is equal).
    public var t: Double?
    public var tTestP: Double?
    /// Orderings where the method was ahead, behind, level; two-sided exact sign test (ties dropped).
    public var wins: Int
    public var losses: Int
    public var ties: Int
    public var signTestP: Double

    public init(method: String, baseline: String, metric: Metric, seeds: [UInt64], differences d: [Double]) {
        self.method = method
        self.baseline = baseline
        self.metric = metric
        orderingSeeds = seeds
        differences = d
        meanDifference = d.isEmpty ? .nan : d.reduce(0, +) / Double(d.count)
        let test = PairedStatistics.pairedT(d)
        t = test?.t
        tTestP = test?.p
        wins = d.filter { $0 > 0 }.count
        losses = d.filter { $0 < 0 }.count
        ties = d.count - wins - losses
        signTestP = PairedStatistics.signTestP(wins: wins, losses: losses)
    }

    /// Every comparison of `method` against `baseline` over the seeds both ran.
    public static func compare(_ method: [RunResult], against baseline: [RunResult]) -> [PairedComparison] {
        let bySeed = Dictionary(baseline.map { ($0.orderingSeed, $0) }, uniquingKeysWith: { a, _ in a })
        let pairs = method.compactMap { r in bySeed[r.orderingSeed].map { (r, $0) } }
        guard let first = pairs.first else { return [] }
        return Metric.allCases.map { metric in
            PairedComparison(method: first.0.method, baseline: first.1.method, metric: metric, seeds: pairs.map(\.0.orderingSeed),
                             differences: pairs.map { metric.value($0.0) - metric.value($0.1) })
        }
    }
}

public enum PairedStatistics {
    /// Paired t-test of differences `d` against 0: t = mean / (sd / √n), df = n − 1, two-sided p.
    public static func pairedT(_ d: [Double]) -> (t: Double, df: Int, p: Double)? {
        let n = d.count
        guard n >= 2, d.contains(where: { $0 != d[0] }) else { return nil }
        let mean = d.reduce(0, +) / Double(n)
        let variance = d.reduce(0) { $0 + ($1 - mean) * ($1 - mean) } / Double(n - 1)
        guard variance > 0 else { return nil }
        let t = mean / (variance / Double(n)).squareRoot()
        return (t, n - 1, studentTTwoSidedP(t, df: Double(n - 1)))
    }

    /// P(|T| ≥ |t|) for Student's t with `df` degrees of freedom: I_{df/(df+t²)}(df/2, 1/2).
    public static func studentTTwoSidedP(_ t: Double, df: Double) -> Double {
        guard t.isFinite else { return t.isNaN ? .nan : 0 }
        return min(1, max(0, regularizedIncompleteBeta(df / (df + t * t), a: df / 2, b: 0.5)))
    }

    /// Two-sided exact sign test: 2 · P(X ≤ min(wins, losses)) for X ~ Binomial(wins + losses, ½), at most 1.
    public static func signTestP(wins: Int, losses: Int) -> Double {
        let n = wins + losses
        guard n > 0 else { return 1 }
        let k = min(wins, losses)
        var tail = 0.0, term = pow(0.5, Double(n))  // C(n, 0) / 2ⁿ
        for i in 0...k {
            tail += term
            term *= Double(n - i) / Double(i + 1)
        }
        return min(1, 2 * tail)
    }

    /// I_x(a, b), the regularized incomplete beta function, by its continued fraction (modified
    /// Lentz), using the symmetry I_x(a, b) = 1 − I_{1−x}(b, a) where the fraction converges slowly.
    static func regularizedIncompleteBeta(_ x: Double, a: Double, b: Double) -> Double {
        if x <= 0 { return 0 }
        if x >= 1 { return 1 }
        let lnBeta: Double = lgamma(a) + lgamma(b) - lgamma(a + b)
        let lnFront: Double = a * log(x) + b * log(1 - x) - lnBeta
        if x > (a + 1) / (a + b + 2) { return 1 - regularizedIncompleteBeta(1 - x, a: b, b: a) }
        let tiny = 1e-300
        var c = 1.0, d = 1 - (a + b) * x / (a + 1)
        if abs(d) < tiny { d = tiny }
        d = 1 / d
        var f = d
        for m in 1...300 {
            let m2 = Double(2 * m), md = Double(m)
            // even step: d_{2m} = m(b − m)x / ((a + 2m − 1)(a + 2m))
            var num = md * (b - md) * x / ((a + m2 - 1) * (a + m2))
            d = 1 + num * d; if abs(d) < tiny { d = tiny }
            c = 1 + num / c; if abs(c) < tiny { c = tiny }
            d = 1 / d
            f *= d * c
            // odd step: d_{2m+1} = −(a + m)(a + b + m)x / ((a + 2m)(a + 2m + 1))
            num = -(a + md) * (a + b + md) * x / ((a + m2) * (a + m2 + 1))
            d = 1 + num * d; if abs(d) < tiny { d = tiny }
            c = 1 + num / c; if abs(c) < tiny { c = tiny }
            d = 1 / d
            let delta = d * c
            f *= delta
            if abs(delta - 1) < 1e-15 { break }
        }
        return exp(lnFront) * f / a
    }
}
