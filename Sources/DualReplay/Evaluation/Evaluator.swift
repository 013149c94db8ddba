import CKernels
import Foundation

/// Routed and oracle evaluation of a model's seen domains: the rows of the R matrices, router
/// accuracy, and the hooks the diagnostics need (linear probe, multi-intent fragility, latency).
/// Routed predictions come from the one `RoutedPredictor`.
public final class Evaluator {
    public let model: ContinualModel
    public let predictor: RoutedPredictor
    public let tokens: TokenCache

    public init(predictor: RoutedPredictor, tokens: TokenCache) {
        self.model = predictor.model
        self.predictor = predictor
        self.tokens = tokens
    }

    /// Scores of one domain's examples: oracle (its own gate and head) and routed (no domain given).
    public struct DomainScore: Sendable {
        public var routedF1, oracleF1, routedAccuracy, oracleAccuracy: Double
        /// Examples the router sent to their own domain, out of `count`.
        public var routerCorrect, count: Int
        /// Examples the router sent to each seen domain (indexed like the model's domains).
        public var routedTo: [Int] = []
    }

    /// One row of the R matrices: every seen domain after the latest one was learned.
    public struct Row: Sendable {
        public var routedF1: [Double] = [], oracleF1: [Double] = [], routedAccuracy: [Double] = [], oracleAccuracy: [Double] = []
        /// Router accuracy over all the row's examples (nil without a router).
        public var routerAccuracy: Double?
        /// [true domain][chosen domain] counts of the row's examples (nil without a router).
        public var routerConfusion: [[Int]]?
    }

    /// Global class ids of examples of domain `j` (their intents must be the domain's).
    func labels(_ examples: [IntentExample], domain j: Int) -> [Int32] {
        let d = model.domains[j]
        var index: [String: Int32] = [:]
        for (i, intent) in d.intents.enumerated() { index[intent] = Int32(d.classOffset + i) }
        return examples.map { e in
            guard let c = index[e.intent] else { preconditionFailure("intent \(e.intent) is not one of domain \(d.name)'s") }
            return c
        }
    }

    /// Oracle pass of one chunk of domain `j`'s sequences (its gate and head): the logits (B,V)
    /// and the predicted global classes.
    func oracle(_ seqs: [[Int32]], domain j: Int) -> (logits: [Float], classes: [Int32]) {
        let r = model.domains[j].classRange, V = model.classCount
        let lg = model.logits(seqs, gateIds: [Int32](repeating: Int32(j), count: seqs.count), reusePrefix: true)
        return (lg, (0..<seqs.count).map { Int32(argmax(lg, row: $0, width: V, in: r)) })
    }

    /// Macro-F1 of domain `j` with its own gate and head (the forgetting signal on validation rows).
    /// Sharded over the ranks (a collective call), as every pass over many rows below.
    public func oracleF1(domain j: Int, examples: [IntentExample]) throws -> Double {
        let pred = try model.map(chunksOf: tokens.ids(examples.map(\.text))) { oracle($0, domain: j).classes }
        return macroF1(predictions: Array(pred.joined()), labels: labels(examples, domain: j), classes: model.domains[j].classRange.map(Int32.init))
    }

    public func score(domain j: Int, examples: [IntentExample]) throws -> DomainScore {
        try scores([(j, examples)])[0]
    }

    /// Oracle and routed scores of several domains' rows (`(domain, examples)`), their canonical
    /// chunks in one sharded pass (the list domain after domain, its first chunk the key).
    func scores(_ sets: [(domain: Int, examples: [IntentExample])]) throws -> [DomainScore] {
        var parts: [(domain: Int, set: Int, seqs: [[Int32]])] = []
        for (s, (j, rows)) in sets.enumerated() {
            for part in tokens.ids(rows.map(\.text)).chunks() { parts.append((j, s, Array(part))) }
        }
        // per chunk of B rows: oracle classes, routed classes, routed domains (3·B)
        let out = try model.map(parts.count, rows: { parts[$0].seqs.count }, key: model.inference.key(of: parts.first?.seqs)) { i -> [Int32] in
            let (j, _, seqs) = parts[i]
            let (logits, classes) = oracle(seqs, domain: j)
            let routed = predictor.predictChunk(seqs, features: .cached, known: .init(gate: j, logits: logits))
            return classes + routed.classes.map(Int32.init) + routed.domains.map(Int32.init)
        }
        var oraclePred = [[Int32]](repeating: [], count: sets.count), routedPred = oraclePred, routedDomain = oraclePred
        for (i, p) in parts.enumerated() {
            let B = p.seqs.count, o = out[i]
            oraclePred[p.set] += o[0..<B]
            routedPred[p.set] += o[B..<(2 * B)]
            routedDomain[p.set] += o[(2 * B)..<(3 * B)]
        }
        return sets.enumerated().map { s, set in
            let (j, examples) = set
            var routedTo = [Int](repeating: 0, count: model.domains.count)
            for d in routedDomain[s] { routedTo[Int(d)] += 1 }
            let y = labels(examples, domain: j), classes = model.domains[j].classRange.map(Int32.init)
            return DomainScore(routedF1: macroF1(predictions: routedPred[s], labels: y, classes: classes),
                               oracleF1: macroF1(predictions: oraclePred[s], labels: y, classes: classes),
                               routedAccuracy: accuracy(predictions: routedPred[s], labels: y),
                               oracleAccuracy: accuracy(predictions: oraclePred[s], labels: y),
                               routerCorrect: routedDomain[s].filter { $0 == Int32(j) }.count, count: examples.count, routedTo: routedTo)
        }
    }

    /// The R-matrix row of every seen domain; `examples[j]` are domain j's evaluation rows.
    public func row(_ examples: [[IntentExample]]) throws -> Row {
        precondition(examples.count <= model.domains.count, "row: \(examples.count) domains, the model knows \(model.domains.count)")
        var row = Row()
        var correct = 0, total = 0, confusion: [[Int]] = []
        for e in try scores(examples.enumerated().map { ($0, $1) }) {
            confusion.append(e.routedTo)
            row.routedF1.append(e.routedF1)
            row.oracleF1.append(e.oracleF1)
            row.routedAccuracy.append(e.routedAccuracy)
            row.oracleAccuracy.append(e.oracleAccuracy)
            correct += e.routerCorrect
            total += e.count
        }
        if predictor.router != nil {
            row.routerAccuracy = Double(correct) / Double(max(total, 1))
            row.routerConfusion = confusion
        }
        return row
    }

    // MARK: - diagnostics hooks

    /// Test macro-F1 of a linear probe fitted on domain `j`'s pooled features under its own gate:
    /// what the representation still holds, whatever its head makes of it.
    public func probeF1(domain j: Int, train: [IntentExample], test: [IntentExample]) throws -> Double {
        let d = model.domains[j]
        func features(_ rows: [IntentExample]) throws -> (x: [Float], y: [Int32]) {
            (try model.pooled(tokens.ids(rows.map(\.text)), gate: j), labels(rows, domain: j).map { $0 - Int32(d.classOffset) })
        }
        let (xt, yt) = try features(train), (xe, ye) = try features(test)
        return LinearProbe.fitAndScore(trainFeatures: xt, trainLabels: yt, testFeatures: xe, testLabels: ye,
                                       dim: model.config.hidden, classes: d.intents.count)
    }

    /// Routed predictions of rows of domain `j` (domain and global class per row), with each row's
    /// routed head distribution over domain j's intents (softmax of its logits; nil when routed
    /// to another domain). Sharded over the ranks like every inference pass.
    func routedHeadProbabilities(domain j: Int, rows: [IntentExample]) throws
        -> (domains: [Int], classes: [Int], probabilities: [[Double]?]) {
        let r = model.domains[j].classRange, V = model.classCount, nj = r.count
        // per chunk of B rows: routed domains, classes, then B·nj probabilities (NaN when routed elsewhere)
        let out = try model.map(chunksOf: tokens.ids(rows.map(\.text))) { seqs -> [Double] in
            let o = predictor.predictChunk(seqs, features: .cached)
            var chunk = o.domains.map(Double.init) + o.classes.map(Double.init)
            for b in 0..<o.domains.count {
                guard o.domains[b] == j else { chunk += [Double](repeating: .nan, count: nj); continue }
                let top = r.map { o.logits[b * V + $0] }.max()!
                let e = r.map { exp(Double(o.logits[b * V + $0] - top)) }
                let z = e.reduce(0, +)
                chunk += e.map { $0 / z }
            }
            return chunk
        }
        var domains: [Int] = [], classes: [Int] = [], probs: [[Double]?] = []
        for o in out {
            let B = o.count / (2 + nj)
            domains += o[0..<B].map { Int($0) }
            classes += o[B..<(2 * B)].map { Int($0) }
            for b in 0..<B {
                let p = o[(2 * B + b * nj)..<(2 * B + (b + 1) * nj)]
                probs.append(p.first!.isNaN ? nil : Array(p))
            }
        }
        return (domains, classes, probs)
    }

    /// Gold intent indices (within domain j) of rows of domain j.
    func goldSets(domain j: Int, rows: [IntentExample]) -> [Set<Int>] {
        let d = model.domains[j]
        return rows.map { Set($0.intents.compactMap { d.intents.firstIndex(of: $0) }) }
    }

    /// The set rule's threshold for domain `j`, chosen on `validation` rows of the domain (single-
    /// and multi-intent validation utterances, never test rows): `Diagnostics.chooseSetThreshold`.
    public func chooseSetThreshold(domain j: Int, validation rows: [IntentExample]) throws -> Double {
        let p = try routedHeadProbabilities(domain: j, rows: rows).probabilities
        return Diagnostics.chooseSetThreshold(probabilities: p, gold: goldSets(domain: j, rows: rows)).threshold
    }

    /// Multi-intent fragility of domain `j` on utterances carrying several of its intents; with
    /// `setThreshold`, also their exact-set accuracy under the set rule at that threshold.
    public func multiIntentScore(domain j: Int, rows: [IntentExample], singleIntentAccuracy: Double,
                                 setThreshold: Double? = nil) throws -> MultiIntentScore {
        let d = model.domains[j]
        let out = try routedHeadProbabilities(domain: j, rows: rows), probs = out.probabilities
        let preds = zip(out.domains, out.classes).map { k, c -> (domain: String, intent: String) in
            let dom = model.domains[k]
            return (dom.name, dom.intents[c - dom.classOffset])
        }
        let sets = setThreshold.map { tau in
            probs.map { p in p.map { Diagnostics.predictedSet(probabilities: $0, threshold: tau).map { d.intents[$0] } } ?? [] }
        }
        return Diagnostics.score(domain: d.name, predictions: preds, gold: rows.map { (domain: d.name, intents: $0.intents) },
                                 singleIntentAccuracy: singleIntentAccuracy, predictedSets: sets, setThreshold: setThreshold)
    }

    /// Single-utterance routed prediction latency (tokenize + route + gated pass + head) at 1 BLAS
    /// thread, over `samples` utterances after 10 warm-up ones (the thread count is restored).
    public func latency(texts: [String], samples n: Int) -> (p50: Double, p99: Double)? {
        guard n > 0, !texts.isEmpty else { return nil }
        let threads = dr_blas_get_threads()
        dr_blas_set_threads(1)
        defer { dr_blas_set_threads(threads) }
        var times: [Double] = []
        for i in 0..<(n + 10) {
            let text = texts[(i * 7919) % texts.count]
            let t0 = DispatchTime.now().uptimeNanoseconds
            let out = predictor.predictChunk([tokens.tokenizer.encode(text, maxLength: tokens.maxLength)], features: .live)
            precondition(out.count == 1)
            let t1 = DispatchTime.now().uptimeNanoseconds
            if i >= 10 { times.append(Double(t1 - t0) / 1e6) }
        }
        times.sort()
        return (times[times.count / 2], times[min(times.count - 1, Int(Double(times.count - 1) * 0.99 + 0.5))])
    }
}
