// Classification metrics and the continual-learning accuracy matrix with its summary measures.
// Indices are 0-based throughout: domain 0 is the first one trained, T domains in all.
import Foundation

// MARK: - Per-domain scores

/// Macro F1 over a domain's classes.
///
/// For each class c in `classes`: TP = pred c and label c, FP = pred c and label ≠ c, FN = label c
/// and pred ≠ c; F1_c = 2·TP / (2·TP + FP + FN). A prediction outside `classes` (e.g. a class of
/// another domain) is wrong: it is an FN of the true class and an FP of no class. Classes with no
/// support and no predictions are left out of the mean. This equals scikit-learn's
/// `f1_score(labels, predictions, labels=L, average="macro", zero_division=0)` with L = the classes
/// that occur in `labels` or `predictions`. Returns 0 when no class is left (e.g. empty input).
public func macroF1(predictions: [Int32], labels: [Int32], classes: [Int32]) -> Double {
    precondition(predictions.count == labels.count, "macroF1: \(predictions.count) predictions for \(labels.count) labels")
    var index: [Int32: Int] = [:]
    for c in classes where index[c] == nil { index[c] = index.count }
    var tp = [Int](repeating: 0, count: index.count)
    var fp = tp, fn = tp
    for (p, y) in zip(predictions, labels) {
        let pi = index[p], yi = index[y]
        if p == y {
            if let yi { tp[yi] += 1 }
        } else {
            if let pi { fp[pi] += 1 }
            if let yi { fn[yi] += 1 }
        }
    }
    var sum = 0.0
    var n = 0
    for k in 0..<index.count {
        let denominator = 2 * tp[k] + fp[k] + fn[k]
        guard denominator > 0 else { continue }  // no support, no predictions
        sum += Double(2 * tp[k]) / Double(denominator)
        n += 1
    }
    return n > 0 ? sum / Double(n) : 0
}

/// Fraction of predictions equal to their label; 0 for empty input.
public func accuracy(predictions: [Int32], labels: [Int32]) -> Double {
    precondition(predictions.count == labels.count, "accuracy: \(predictions.count) predictions for \(labels.count) labels")
    guard !labels.isEmpty else { return 0 }
    return Double(zip(predictions, labels).filter { $0 == $1 }.count) / Double(labels.count)
}

/// Multi-intent utterances: the fraction whose predicted label set equals the true set exactly
/// (the "overall accuracy" of MixATIS/MixSNIPS papers for intents); 0 for empty input.
public func exactMatchAccuracy(predictions: [Set<Int32>], labels: [Set<Int32>]) -> Double {
    precondition(predictions.count == labels.count, "exactMatchAccuracy: counts differ")
    guard !labels.isEmpty else { return 0 }
    return Double(zip(predictions, labels).filter { $0 == $1 }.count) / Double(labels.count)
}

// MARK: - Accuracy matrix

/// R[i][j] = F1 on domain j after training through domain i (0-based, T×T). Entries not evaluated
/// (normally j > i) are NaN; they are written as `null` in JSON.
public struct EvalMatrix: Codable, Equatable, Sendable {
    public var domains: [String]
    public var f1: [[Double]]

    public init(domains: [String]) {
        self.domains = domains
        f1 = Array(repeating: Array(repeating: .nan, count: domains.count), count: domains.count)
    }

    public init(domains: [String], f1: [[Double]]) {
        precondition(f1.count == domains.count && f1.allSatisfy { $0.count == domains.count },
                     "EvalMatrix: f1 must be \(domains.count)×\(domains.count)")
        self.domains = domains
        self.f1 = f1
    }

    /// T, the number of domains.
    public var count: Int { domains.count }

    public subscript(afterTraining i: Int, domain j: Int) -> Double {
        get { f1[i][j] }
        set { f1[i][j] = newValue }
    }

    /// ACC = (1/T) Σ_j R[T−1][j]: mean F1 of the last row (NaN entries skipped).
    public var averageF1: Double {
        guard count > 0 else { return 0 }
        return EvalMatrix.mean(f1[count - 1])
    }

    /// BWT = 1/(T−1) Σ_{j=0}^{T−2} (R[T−1][j] − R[j][j]). Negative = forgetting. 0 when T < 2.
    public var backwardTransfer: Double {
        guard count > 1 else { return 0 }
        let t = count - 1
        return EvalMatrix.mean((0..<t).map { f1[t][$0] - f1[$0][$0] })
    }

    /// FWT against single-domain training: FWT = 1/(T−1) Σ_{j=1}^{T−1} (R[j][j] − single[j]), where
    /// single[j] is the F1 of a model trained on domain j alone (same encoder, same budget). This is
    /// the single-task-reference definition, not Lopez-Paz & Ranzato's R[j−1][j] − b_j; domain 0 has
    /// nothing before it and is left out. `single` is indexed like `domains`. 0 when T < 2.
    public func forwardTransfer(single: [Double]) -> Double {
        precondition(single.count == count, "forwardTransfer: \(single.count) single-domain scores for \(count) domains")
        guard count > 1 else { return 0 }
        return EvalMatrix.mean((1..<count).map { f1[$0][$0] - single[$0] })
    }

    /// `forwardTransfer(single:)` with the references looked up by domain name (orderings differ).
    public func forwardTransfer(singleByDomain: [String: Double]) -> Double {
        forwardTransfer(single: domains.map { singleByDomain[$0] ?? .nan })
    }

    /// Forgetting (Chaudhry et al., 2018): F = 1/(T−1) Σ_{j=0}^{T−2} (max_{j≤i≤T−2} R[i][j] − R[T−1][j]),
    /// the drop from the best score a domain had before the last one was learned. 0 when T < 2.
    public var forgetting: Double {
        guard count > 1 else { return 0 }
        let t = count - 1
        return EvalMatrix.mean((0..<t).map { j in
            let best = (j..<t).map { f1[$0][j] }.filter { !$0.isNaN }.max() ?? .nan
            return best - f1[t][j]
        })
    }

    /// Intransigence: I = (1/T) Σ_{j=0}^{T−1} (joint[j] − R[j][j]), where joint[j] is the F1 on domain j
    /// of a model trained jointly on all domains. `joint` is indexed like `domains`.
    public func intransigence(joint: [Double]) -> Double {
        precondition(joint.count == count, "intransigence: \(joint.count) joint scores for \(count) domains")
        guard count > 0 else { return 0 }
        return EvalMatrix.mean((0..<count).map { joint[$0] - f1[$0][$0] })
    }

    public func intransigence(jointByDomain: [String: Double]) -> Double {
        intransigence(joint: domains.map { jointByDomain[$0] ?? .nan })
    }

    // MARK: over a subset of domains

    /// `averageF1` over the domains whose indices are in `subset` (e.g. those with more than one
    /// intent): the mean of R[T−1][j] for j in the subset. NaN when the subset is empty.
    public func averageF1(over subset: Set<Int>) -> Double {
        guard count > 0 else { return .nan }
        return EvalMatrix.mean(subset.sorted().filter { $0 < count }.map { f1[count - 1][$0] })
    }

    /// `backwardTransfer` over the subset: the mean of R[T−1][j] − R[j][j] for j in the subset,
    /// j < T − 1 (the last domain, in the subset or not, is not an earlier one). NaN when no
    /// domain of the subset came before the last; 0 when T < 2, as `backwardTransfer`.
    public func backwardTransfer(over subset: Set<Int>) -> Double {
        guard count > 1 else { return 0 }
        let t = count - 1
        return EvalMatrix.mean(subset.sorted().filter { $0 < t }.map { f1[t][$0] - f1[$0][$0] })
    }

    /// `forgetting` over the subset (j in the subset, j < T − 1); NaN as `backwardTransfer(over:)`.
    public func forgetting(over subset: Set<Int>) -> Double {
        guard count > 1 else { return 0 }
        let t = count - 1
        return EvalMatrix.mean(subset.sorted().filter { $0 < t }.map { j in
            ((j..<t).map { f1[$0][j] }.filter { !$0.isNaN }.max() ?? .nan) - f1[t][j]
        })
    }

    /// Mean of the finite values; NaN if there are none.
    static func mean(_ values: [Double]) -> Double {
        let finite = values.filter { !$0.isNaN }
        return finite.isEmpty ? .nan : finite.reduce(0, +) / Double(finite.count)
    }

    // NaN means "not evaluated": encoded as null, and equal to itself for ==.
    private enum CodingKeys: String, CodingKey { case domains, f1 }

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        let domains = try c.decode([String].self, forKey: .domains)
        let rows = try c.decode([[Double?]].self, forKey: .f1)
        guard rows.count == domains.count, rows.allSatisfy({ $0.count == domains.count }) else {
            throw DecodingError.dataCorruptedError(forKey: .f1, in: c, debugDescription: "f1 must be \(domains.count)×\(domains.count)")
        }
        self.domains = domains
        f1 = rows.map { $0.map { $0 ?? .nan } }
    }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(domains, forKey: .domains)
        try c.encode(f1.map { $0.map { $0.isNaN ? nil : $0 } }, forKey: .f1)
    }

    public static func == (a: EvalMatrix, b: EvalMatrix) -> Bool {
        a.domains == b.domains && a.f1.count == b.f1.count
            && zip(a.f1, b.f1).allSatisfy { ra, rb in
                ra.count == rb.count && zip(ra, rb).allSatisfy { $0 == $1 || ($0.isNaN && $1.isNaN) }
            }
    }
}

// MARK: - Aggregation over orderings

/// Mean and sample standard deviation (n − 1 in the denominator; 0 for a single value). NaN values
/// are skipped; `count` is the number used.
public struct MeanStd: Codable, Equatable, Sendable {
    public var mean: Double
    public var std: Double
    public var count: Int

    public init(_ values: [Double]) {
        let finite = values.filter { !$0.isNaN }
        count = finite.count
        guard !finite.isEmpty else { mean = .nan; std = .nan; return }
        let m = finite.reduce(0, +) / Double(finite.count)
        mean = m
        std = finite.count > 1
            ? (finite.reduce(0) { $0 + ($1 - m) * ($1 - m) } / Double(finite.count - 1)).squareRoot()
            : 0
    }
}

/// Summary measures over several runs (usually domain orderings) of one method.
public struct EvalSummary: Codable, Equatable, Sendable {
    public var runs: Int
    public var averageF1: MeanStd
    public var backwardTransfer: MeanStd
    public var forgetting: MeanStd
    /// Present when single-domain references were given.
    public var forwardTransfer: MeanStd?
    /// Present when joint-training references were given.
    public var intransigence: MeanStd?

    /// Aggregates matrices over a subset of each one's domains (`subsets[i]` indexes matrix i's
    /// domains: orderings differ): average F1, BWT and forgetting; no FWT or intransigence.
    public static func aggregate(_ matrices: [EvalMatrix], subsets: [Set<Int>]) -> EvalSummary {
        precondition(matrices.count == subsets.count, "aggregate: \(subsets.count) subsets for \(matrices.count) matrices")
        let pairs = Array(zip(matrices, subsets))
        return EvalSummary(runs: matrices.count, averageF1: MeanStd(pairs.map { $0.averageF1(over: $1) }),
                           backwardTransfer: MeanStd(pairs.map { $0.backwardTransfer(over: $1) }),
                           forgetting: MeanStd(pairs.map { $0.forgetting(over: $1) }), forwardTransfer: nil, intransigence: nil)
    }

    /// Aggregates matrices; `single` and `joint` are per domain name, so orderings may differ.
    public static func aggregate(_ matrices: [EvalMatrix], single: [String: Double]? = nil,
                                 joint: [String: Double]? = nil) -> EvalSummary {
        EvalSummary(
            runs: matrices.count,
            averageF1: MeanStd(matrices.map(\.averageF1)),
            backwardTransfer: MeanStd(matrices.map(\.backwardTransfer)),
            forgetting: MeanStd(matrices.map(\.forgetting)),
            forwardTransfer: single.map { s in MeanStd(matrices.map { $0.forwardTransfer(singleByDomain: s) }) },
            intransigence: joint.map { s in MeanStd(matrices.map { $0.intransigence(jointByDomain: s) }) })
    }
}
