import Foundation

extension DomainTrainer {
    /// The per-domain validation score behind the forgetting signal, after domain `k` (the newest,
    /// `validation.count == k + 1`) has trained and before the router is retrained for it, and
    /// whether each score can serve as the domain's reference (its best score so far).
    ///
    /// A domain with two or more intents scores its oracle macro-F1 (its own gate and head).
    /// A domain with ONE intent cannot be scored that way: its one-output head predicts that
    /// intent whatever the input, so its oracle F1 is 1 forever and would never signal forgetting.
    /// What can go wrong for it is routing, so an earlier one-intent domain scores its routed
    /// recall: the share of its validation rows that routed prediction sends to it. With a router
    /// that is the router as it stands (trained through domain k − 1; the newest domain's
    /// output is not trained yet and is left out of the argmax); without one it is the argmax over
    /// every seen class under the newest gate, as routed evaluation does. Not a reference: the
    /// newest domain's score when it has one intent (its trivial oracle F1), and a routed recall
    /// while the router knows a single domain (trivially 1).
    ///
    /// Every domain's canonical chunks go through one sharded pass (the list domain after domain,
    /// `ShardedInference.owner`), so every rank gets the same scores (they steer its buffer).
    func validationScores(_ st: LearnerState, validation: [[IntentExample]]) throws -> (scores: [Double], reference: [Bool]) {
        let m = st.model, k = m.domains.count - 1
        precondition(validation.count == k + 1, "validationScores: rows for \(validation.count) domains, expected \(k + 1)")
        let oracle = Evaluator(predictor: RoutedPredictor(model: m, router: nil), tokens: tokens)
        // an oracle score (macro-F1) or a routed recall (one-intent earlier domains)
        let byOracle = validation.indices.map { j in m.domains[j].intents.count > 1 || j == k }
        var parts: [(domain: Int, seqs: [[Int32]])] = []
        for (j, rows) in validation.enumerated() {
            for part in tokens.ids(rows.map(\.text)).chunks() { parts.append((j, Array(part))) }
        }
        // per chunk: its oracle classes, or the number of its rows routed to their own domain
        let out = try m.map(parts.count, rows: { parts[$0].seqs.count }, key: m.inference.key(of: parts.first?.seqs)) { i -> [Int32] in
            let (j, seqs) = parts[i]
            return byOracle[j] ? oracle.oracle(seqs, domain: j).classes : [Int32(routedHits(st, domain: j, seqs, among: k))]
        }
        var perDomain = [[Int32]](repeating: [], count: validation.count)
        for (i, p) in parts.enumerated() { perDomain[p.domain] += out[i] }
        var scores: [Double] = [], reference: [Bool] = []
        for (j, rows) in validation.enumerated() {
            if byOracle[j] {
                scores.append(macroF1(predictions: perDomain[j], labels: oracle.labels(rows, domain: j),
                                      classes: m.domains[j].classRange.map(Int32.init)))
                reference.append(m.domains[j].intents.count > 1)  // not the newest one-intent domain's trivial 1
            } else {
                scores.append(rows.isEmpty ? 0 : Double(perDomain[j].reduce(0, +)) / Double(rows.count))
                reference.append(st.router == nil || k > 1)
            }
        }
        return (scores, reference)
    }

    /// How many of `seqs` (one chunk of domain `j`'s rows) routing sends to domain j, choosing
    /// among the first `among` domains when a router decides.
    func routedHits(_ st: LearnerState, domain j: Int, _ seqs: [[Int32]], among: Int) -> Int {
        let m = st.model
        if let router = st.router {
            guard among > 1 else { return seqs.count }
            let p = router.probabilities(router.features(seqs).flatMap { $0 }, count: seqs.count)
            let K = m.domains.count
            return (0..<seqs.count).filter { argmax(p, row: $0, width: K, in: 0..<among) == j }.count
        }
        return RoutedPredictor(model: m, router: nil).predictChunk(seqs, features: .cached).domains.filter { $0 == j }.count
    }
}
