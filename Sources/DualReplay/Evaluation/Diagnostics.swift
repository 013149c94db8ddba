// Two continual-learning diagnostics, as pure functions over numbers the runner already has:
//  - a linear probe that tells true forgetting from alignment drift ("spurious forgetting"), and
//  - multi-intent fragility: how much worse a domain does on utterances that carry 2-3 intents.
import CKernels
import Foundation

// MARK: - Linear probe

/// Settings of `LinearProbe`. The defaults suit mean-pooled sentence embeddings (384-d MiniLM,
/// ~1500 rows, ~20 classes, a few tenths of a second in release): on standardised features, 100
/// epochs of Adam at 0.01 fit the training rows well, and the finite budget together with the L2
/// keeps a 384-d probe on ~100 rows per class from chasing noise (l2 1e-3 is about scikit-learn's
/// C = 1 at 1000 rows).
public struct LinearProbeConfig: Codable, Equatable, Sendable {
    /// Passes over the training rows.
    public var epochs: Int
    /// Adam step size (β1 0.9, β2 0.999, ε 1e-8).
    public var learningRate: Float
    /// L2 penalty on the weights (not the biases): the loss is mean cross-entropy + l2/2·‖W‖².
    public var l2: Float
    /// Rows per Adam step; the rows are shuffled each epoch.
    public var batchSize: Int
    /// Seeds the shuffle (weights start at zero), so the same inputs and seed give the same probe.
    public var seed: UInt64

    public init(epochs: Int = 100, learningRate: Float = 0.01, l2: Float = 1e-3, batchSize: Int = 256, seed: UInt64 = 0) {
        self.epochs = epochs
        self.learningRate = learningRate
        self.l2 = l2
        self.batchSize = batchSize
        self.seed = seed
    }
}

/// A softmax-regression probe fitted afresh on frozen features.
///
/// Features are standardised with the training rows' per-dimension mean and standard deviation
/// (dimensions constant on the training rows are dropped), then logits = W·x + b with W (classes, dim)
/// are fitted by mini-batch Adam on mean cross-entropy + l2/2·‖W‖², from W = 0, b = 0. Everything is
/// deterministic given the inputs and `LinearProbeConfig.seed`.
///
/// Why: an old domain's head F1 can fall because the encoder lost the knowledge or only because
/// its features moved away from what the frozen head expects. A probe trained on the *current*
/// features of the domain's training rows and scored on its test rows measures what is still
/// linearly decodable; compare it with the head (`ProbeDiagnosis`).
public struct LinearProbe: Sendable {
    public let dim: Int
    public let classes: Int
    /// Standardisation learnt on the training rows: x̂ = (x − mean) · invStd.
    let mean: [Float]   // (dim)
    let invStd: [Float] // (dim); 0 for a dimension constant on the training rows
    let weight: [Float] // (classes, dim), on standardised features
    let bias: [Float]   // (classes)

    /// Fits a probe. `features` is (rows, dim) row-major, `labels` (rows) in 0..<classes.
    /// With no training rows the probe predicts class 0 everywhere.
    public static func fit(features: [Float], labels: [Int32], dim: Int, classes: Int,
                           config: LinearProbeConfig = LinearProbeConfig()) -> LinearProbe {
        precondition(dim > 0 && classes > 0, "LinearProbe: dim \(dim), classes \(classes)")
        precondition(features.count == labels.count * dim,
                     "LinearProbe: \(features.count) feature values for \(labels.count) rows of \(dim)")
        precondition(labels.allSatisfy { $0 >= 0 && Int($0) < classes }, "LinearProbe: labels must be in 0..<\(classes)")
        precondition(config.epochs >= 0 && config.batchSize > 0, "LinearProbe: epochs \(config.epochs), batch \(config.batchSize)")
        let n = labels.count, d = dim, k = classes

        // Per-dimension mean and population std, accumulated in Double.
        var sum = [Double](repeating: 0, count: d), sumSq = sum
        features.withUnsafeBufferPointer { x in
            for r in 0..<n {
                for j in 0..<d {
                    let v = Double(x[r * d + j])
                    sum[j] += v
                    sumSq[j] += v * v
                }
            }
        }
        var mean = [Float](repeating: 0, count: d), invStd = [Float](repeating: 0, count: d)
        if n > 0 {
            for j in 0..<d {
                let m = sum[j] / Double(n)
                let variance = max(0, sumSq[j] / Double(n) - m * m)
                mean[j] = Float(m)
                // A dimension with no spread on the training rows carries nothing the probe can learn.
                invStd[j] = variance > 1e-12 * max(1, m * m) ? Float(1 / variance.squareRoot()) : 0
            }
        }
        let x = standardise(features, rows: n, dim: d, mean: mean, invStd: invStd) // (n, d)

        var weight = [Float](repeating: 0, count: k * d), bias = [Float](repeating: 0, count: k)
        guard n > 0 else { return LinearProbe(dim: d, classes: k, mean: mean, invStd: invStd, weight: weight, bias: bias) }

        weight.withUnsafeMutableBufferPointer { w in
            bias.withUnsafeMutableBufferPointer { bb in
                SoftmaxRegression.fit(features: x, labels: labels, dim: d, classes: k, weight: w.baseAddress!, bias: bb.baseAddress!,
                                      config: .init(epochs: config.epochs, batchSize: config.batchSize, learningRate: config.learningRate,
                                                    l2: config.l2, seed: config.seed))
            }
        }
        return LinearProbe(dim: d, classes: k, mean: mean, invStd: invStd, weight: weight, bias: bias)
    }

    /// The most likely class of each row of `features` (rows, dim); ties go to the lower class.
    public func predict(features: [Float]) -> [Int32] {
        precondition(features.count % dim == 0, "LinearProbe.predict: \(features.count) values are not rows of \(dim)")
        let n = features.count / dim
        guard n > 0 else { return [] }
        let x = LinearProbe.standardise(features, rows: n, dim: dim, mean: mean, invStd: invStd)
        var logits = [Float](repeating: 0, count: n * classes) // (n, classes)
        dr_matmul_forward(&logits, x, weight, bias, Int64(n), Int64(dim), Int64(classes))
        return (0..<n).map { Int32(argmax(logits, row: $0, width: classes, in: 0..<classes)) }
    }

    /// Fits a probe on the training rows and returns its macro F1 (0...1, `macroF1` over classes
    /// 0..<classes) on the test rows. Both feature arrays are (rows, dim) row-major; labels are in
    /// 0..<classes. 0 when there are no test rows.
    public static func fitAndScore(trainFeatures: [Float], trainLabels: [Int32], testFeatures: [Float], testLabels: [Int32],
                                   dim: Int, classes: Int, config: LinearProbeConfig = LinearProbeConfig()) -> Double {
        precondition(testFeatures.count == testLabels.count * dim,
                     "LinearProbe: \(testFeatures.count) test feature values for \(testLabels.count) rows of \(dim)")
        let probe = fit(features: trainFeatures, labels: trainLabels, dim: dim, classes: classes, config: config)
        return macroF1(predictions: probe.predict(features: testFeatures), labels: testLabels,
                       classes: (0..<Int32(classes)).map { $0 })
    }

    /// (rows, dim) → (rows, dim) with x̂ = (x − mean) · invStd.
    static func standardise(_ features: [Float], rows: Int, dim: Int, mean: [Float], invStd: [Float]) -> [Float] {
        var out = [Float](repeating: 0, count: rows * dim)
        features.withUnsafeBufferPointer { x in
            out.withUnsafeMutableBufferPointer { o in
                for r in 0..<rows {
                    for j in 0..<dim { o[r * dim + j] = (x[r * dim + j] - mean[j]) * invStd[j] }
                }
            }
        }
        return out
    }
}

// MARK: - Probe diagnosis

/// Head versus probe for one old domain, at the time it was learnt and now (after later domains).
///
/// The drops are `headDrop = headF1AtLearning − headF1Now` and
/// `probeDrop = probeF1AtLearning − probeF1Now` (positive = worse now). `kind` follows `classify`.
public struct ProbeDiagnosis: Codable, Equatable, Sendable {
    public enum Kind: String, Codable, Sendable, CaseIterable {
        /// The head lost less than the threshold.
        case stable
        /// "Spurious forgetting": the head lost at least the threshold, but a fresh probe lost less
        /// than half as much, so the knowledge is still there and the features have moved.
        case alignmentDrift = "alignment-drift"
        /// The head lost at least the threshold and the probe lost at least half as much.
        case knowledgeLoss = "knowledge-loss"
        /// A score is NaN or infinite (e.g. the domain was not evaluated).
        case undetermined
    }

    /// The default `threshold` of `classify`: 2 F1 points.
    public static let defaultThreshold = 0.02

    public let domain: String
    public let headF1AtLearning: Double
    public let headF1Now: Double
    public let probeF1AtLearning: Double
    public let probeF1Now: Double
    /// headF1AtLearning − headF1Now; stored so that it is in the JSON.
    public let headDrop: Double
    /// probeF1AtLearning − probeF1Now.
    public let probeDrop: Double
    public let kind: Kind

    public init(domain: String, headF1AtLearning: Double, headF1Now: Double, probeF1AtLearning: Double, probeF1Now: Double,
                threshold: Double = ProbeDiagnosis.defaultThreshold) {
        self.domain = domain
        self.headF1AtLearning = headF1AtLearning
        self.headF1Now = headF1Now
        self.probeF1AtLearning = probeF1AtLearning
        self.probeF1Now = probeF1Now
        headDrop = headF1AtLearning - headF1Now
        probeDrop = probeF1AtLearning - probeF1Now
        kind = ProbeDiagnosis.classify(headDrop: headDrop, probeDrop: probeDrop, threshold: threshold)
    }

    /// The rule, on drops (positive = worse now), in this order:
    /// 1. either drop not finite → `.undetermined`;
    /// 2. `headDrop < threshold` → `.stable`;
    /// 3. `probeDrop < headDrop / 2` → `.alignmentDrift` (spurious forgetting: still decodable);
    /// 4. otherwise → `.knowledgeLoss`.
    public static func classify(headDrop: Double, probeDrop: Double, threshold: Double = defaultThreshold) -> Kind {
        guard headDrop.isFinite, probeDrop.isFinite else { return .undetermined }
        if headDrop < threshold { return .stable }
        return probeDrop < headDrop / 2 ? .alignmentDrift : .knowledgeLoss
    }
}

// MARK: - Multi-intent fragility

/// How one domain does on multi-intent utterances against its single-intent accuracy.
public struct MultiIntentScore: Codable, Equatable, Sendable {
    public let domain: String
    /// Multi-intent utterances of the domain that were scored.
    public let count: Int
    /// Fraction whose predicted domain is right and predicted intent is one of the gold intents.
    public let anyHit: Double
    /// Fraction whose predicted domain is right.
    public let domainHit: Double
    /// The domain's accuracy on single-intent utterances (the reference).
    public let singleIntentAccuracy: Double
    /// singleIntentAccuracy − anyHit: how much a second or third intent costs (positive = worse).
    public let fragility: Double
    /// Fraction whose predicted domain is right and predicted intent SET (`Diagnostics.predictedSet`
    /// at `setThreshold`) equals the gold set. nil in results made before set prediction existed.
    public let exactSet: Double?
    /// The set rule's threshold τ, chosen on validation utterances (`Diagnostics.chooseSetThreshold`).
    public let setThreshold: Double?

    public init(domain: String, count: Int, anyHit: Double, domainHit: Double, singleIntentAccuracy: Double,
                exactSet: Double? = nil, setThreshold: Double? = nil) {
        self.domain = domain
        self.count = count
        self.anyHit = anyHit
        self.domainHit = domainHit
        self.singleIntentAccuracy = singleIntentAccuracy
        fragility = count > 0 ? singleIntentAccuracy - anyHit : 0
        self.exactSet = exactSet
        self.setThreshold = setThreshold
    }
}

/// Scoring and reporting of the diagnostics above.
public enum Diagnostics {
    /// Scores `domain` on multi-intent utterances. `predictions[i]` is the model's single
    /// (domain, intent) for utterance i, `gold[i]` its domain and 2-3 gold intents. Only utterances
    /// whose gold domain is `domain` count, so all domains' utterances may be passed at once.
    /// With none, `count` is 0 and the rates and fragility are 0.
    /// `predictedSets[i]`, when given, is utterance i's predicted intent set (in its predicted
    /// domain): `exactSet` counts the utterances whose domain is right and whose set equals the
    /// gold set (order and repeats ignored); `setThreshold` is recorded with it.
    public static func score(domain: String, predictions: [(domain: String, intent: String)],
                             gold: [(domain: String, intents: [String])], singleIntentAccuracy: Double,
                             predictedSets: [[String]]? = nil, setThreshold: Double? = nil) -> MultiIntentScore {
        precondition(predictions.count == gold.count, "Diagnostics.score: \(predictions.count) predictions for \(gold.count) utterances")
        precondition(predictedSets.map { $0.count == gold.count } ?? true, "Diagnostics.score: predicted sets for \(predictedSets?.count ?? 0) utterances")
        var count = 0, anyHits = 0, domainHits = 0, exact = 0
        for (i, (p, g)) in zip(predictions, gold).enumerated() where g.domain == domain {
            count += 1
            guard p.domain == g.domain else { continue }
            domainHits += 1
            if g.intents.contains(p.intent) { anyHits += 1 }
            if let sets = predictedSets, Set(sets[i]) == Set(g.intents) { exact += 1 }
        }
        let n = Double(max(count, 1))
        return MultiIntentScore(domain: domain, count: count, anyHit: Double(anyHits) / n,
                                domainHit: Double(domainHits) / n, singleIntentAccuracy: singleIntentAccuracy,
                                exactSet: predictedSets == nil ? nil : Double(exact) / n, setThreshold: setThreshold)
    }

    /// The set decision rule on one routed head's probabilities `p` (its intents, summing to 1):
    /// the top intent (ties: the lower index) and every other intent with p ≥ `threshold`, in index order.
    public static func predictedSet(probabilities p: [Double], threshold: Double) -> [Int] {
        guard !p.isEmpty else { return [] }
        var top = 0
        for c in 1..<p.count where p[c] > p[top] { top = c }
        return p.indices.filter { $0 == top || p[$0] >= threshold }
    }

    /// Exact-set accuracy of the rule at `threshold`: `probabilities[i]` is utterance i's routed head
    /// distribution over its gold domain's intents, or nil when it was routed to another domain (a
    /// miss); `gold[i]` its intent indices. 0 with no utterances.
    public static func exactSetAccuracy(probabilities: [[Double]?], gold: [Set<Int>], threshold: Double) -> Double {
        precondition(probabilities.count == gold.count, "exactSetAccuracy: \(probabilities.count) rows, \(gold.count) gold sets")
        guard !gold.isEmpty else { return 0 }
        var hits = 0
        for (p, g) in zip(probabilities, gold) {
            if let p, Set(predictedSet(probabilities: p, threshold: threshold)) == g { hits += 1 }
        }
        return Double(hits) / Double(gold.count)
    }

    /// The threshold of `grid` with the best exact-set accuracy on validation utterances (ties: the
    /// larger threshold, the more conservative rule), and that accuracy. Callers pass validation
    /// rows only, never test rows.
    public static func chooseSetThreshold(probabilities: [[Double]?], gold: [Set<Int>],
                                          grid: [Double] = ConfigDefaults.setThresholdGrid) -> (threshold: Double, accuracy: Double) {
        precondition(!grid.isEmpty, "chooseSetThreshold: empty grid")
        var best = (threshold: grid[0], accuracy: -1.0)
        for t in grid {
            let a = exactSetAccuracy(probabilities: probabilities, gold: gold, threshold: t)
            if a > best.accuracy || (a == best.accuracy && t > best.threshold) { best = (t, a) }
        }
        return best
    }

    /// `score` for every gold domain, in order of first appearance; a domain missing from
    /// `singleIntentAccuracy` gets reference 0.
    public static func scores(predictions: [(domain: String, intent: String)], gold: [(domain: String, intents: [String])],
                              singleIntentAccuracy: [String: Double]) -> [MultiIntentScore] {
        var seen = Set<String>(), domains: [String] = []
        for g in gold where seen.insert(g.domain).inserted { domains.append(g.domain) }
        return domains.map {
            score(domain: $0, predictions: predictions, gold: gold, singleIntentAccuracy: singleIntentAccuracy[$0] ?? 0)
        }
    }

    /// Two Markdown tables (F1, accuracies and drops in points, like `ResultsReport`); a table with
    /// no rows is left out, and the result is empty when both are.
    public static func markdown(probes: [ProbeDiagnosis], multiIntent: [MultiIntentScore]) -> String {
        func pts(_ v: Double) -> String { v.isFinite ? String(format: "%.1f", 100 * v) : "-" }
        var s = ""
        if !probes.isEmpty {
            s += "Linear probe (head vs. probe F1 when learnt and now; drops in points):\n\n"
            s += "| Domain | head F1 learnt | head F1 now | head drop | probe F1 learnt | probe F1 now | probe drop | kind |\n"
            s += "|---|---|---|---|---|---|---|---|\n"
            for p in probes {
                s += "| \(p.domain) | \(pts(p.headF1AtLearning)) | \(pts(p.headF1Now)) | \(pts(p.headDrop)) | "
                s += "\(pts(p.probeF1AtLearning)) | \(pts(p.probeF1Now)) | \(pts(p.probeDrop)) | \(p.kind.rawValue) |\n"
            }
        }
        if !multiIntent.isEmpty {
            if !s.isEmpty { s += "\n" }
            s += "Multi-intent fragility (fragility = single-intent accuracy − any-hit; exact-set: the predicted "
            s += "intent set, top intent + those with p ≥ τ, equals the gold set; τ chosen on validation):\n\n"
            s += "| Domain | utterances | any-hit | exact-set | τ | domain-hit | single-intent acc | fragility |\n"
            s += "|---|---|---|---|---|---|---|---|\n"
            for m in multiIntent {
                let rate = { (v: Double) in m.count > 0 ? pts(v) : "-" }
                let tau = m.setThreshold.map { String(format: "%.2f", $0) } ?? "-"
                s += "| \(m.domain) | \(m.count) | \(rate(m.anyHit)) | \(m.exactSet.map(rate) ?? "-") | \(tau) | \(rate(m.domainHit)) | "
                s += "\(pts(m.singleIntentAccuracy)) | \(rate(m.fragility)) |\n"
            }
        }
        return s
    }
}
