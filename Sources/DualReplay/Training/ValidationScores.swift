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
    func validationScores(_ st: LearnerState, validation: [[IntentExample]]) -> (scores: [Double], reference: [Bool]) {
        let m = st.model, k = m.domains.count - 1
        precondition(validation.count == k + 1, "validationScores: rows for \(validation.count) domains, expected \(k + 1)")
        let oracle = Evaluator(predictor: RoutedPredictor(model: m, router: nil), tokens: tokens)
        var scores: [Double] = [], reference: [Bool] = []
        for (j, rows) in validation.enumerated() {
            if m.domains[j].intents.count > 1 {
                scores.append(oracle.oracleF1(domain: j, examples: rows))
                reference.append(true)
            } else if j == k {
                scores.append(oracle.oracleF1(domain: j, examples: rows))
                reference.append(false)
            } else {
                scores.append(routedRecall(st, domain: j, rows: rows, among: k))
                reference.append(st.router == nil || k > 1)
            }
        }
        return (scores, reference)
    }

    /// Share of `rows` (of domain `j`) that routing sends to domain j, choosing among the first
    /// `among` domains when a router decides (0 for no rows).
    func routedRecall(_ st: LearnerState, domain j: Int, rows: [IntentExample], among: Int) -> Double {
        guard !rows.isEmpty else { return 0 }
        let m = st.model
        var hits = 0
        for part in tokens.ids(rows.map(\.text)).chunks() {
            let seqs = Array(part)
            if let router = st.router {
                guard among > 1 else { hits += seqs.count; continue }
                let p = router.probabilities(router.features(seqs).flatMap { $0 }, count: seqs.count)
                let K = m.domains.count
                hits += (0..<seqs.count).filter { argmax(p, row: $0, width: K, in: 0..<among) == j }.count
            } else {
                let out = RoutedPredictor(model: m, router: nil).predictChunk(seqs, features: .cached)
                hits += out.domains.filter { $0 == j }.count
            }
        }
        return Double(hits) / Double(rows.count)
    }
}
