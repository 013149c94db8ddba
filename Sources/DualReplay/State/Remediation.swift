// `dualreplay remediate`: the alignment-drift remedy (`GateRefit`) on a saved state. Every known
// domain with two or more intents is checked on its validation rows; each one classed as alignment
// drift gets a fresh gate row and head trained on its buffered examples, kept only if its
// validation F1 improves. Nothing is written here: the CLI saves a new version with --apply.
import Foundation

/// What `ContinualState.remediate` found and did.
public struct RemediationReport: Codable, Equatable, Sendable {
    /// One known domain: the drift check, and the refit when it was flagged.
    public struct Entry: Codable, Equatable, Sendable {
        public var domain: String
        public var intents: Int
        /// nil for a one-intent domain (a gate cannot change what its head predicts).
        public var diagnosis: ProbeDiagnosis?
        public var refit: GateRefit.Outcome?
        /// Routed F1 on the state's evaluation split, before and after (the kept refits applied).
        public var routedF1Before: Double
        public var routedF1After: Double
    }
    public var version: Int
    public var steps: Int
    public var entries: [Entry]
    public var routerAccuracy: Double?
    /// Domains whose candidate was kept: what `--apply` changes (empty: nothing to write).
    public var changed: [String] { entries.compactMap { $0.refit?.kept == true ? $0.domain : nil } }
}

extension ContinualState {
    /// Runs the drift check on every known domain and refits the flagged ones in memory, for
    /// `steps` Adam steps each (nil: the method's `heads.driftRefitSteps`, else
    /// `ConfigDefaults.remediateSteps`). Kept refits change this in-memory state only: its model,
    /// its best validation F1 and the last metrics row (re-evaluated, marked `remediated`);
    /// `save(to:)` writes them as a new version. The training generator is not drawn from (each
    /// refit seeds its own), so a rerun from the same version gives the same bits.
    public func remediate(steps: Int? = nil) throws -> RemediationReport {
        precondition(!manifest.domains.isEmpty, "remediate: no domain onboarded yet")
        let st = learner, m = st.model
        let n = steps ?? settings.driftRefitSteps ?? ConfigDefaults.remediateSteps
        try Bounds.check(n, ConfigBounds.driftRefitSteps, "remediate --steps")
        let domains = try ContinualState.makeScenario(manifest, domains: try ContinualState.scenarioDomains(manifest, domainExamples,
                                                                                                              file: StateDirectory.manifestName)).domains
        let tokens = TokenCache(tokenizer: encoder.tokenizer, maxLength: training.maxLength)
        let trainer = DomainTrainer(settings: settings, training: training, encoder: encoder, tokens: tokens)
        trainer.progress = progress
        let evalSplit = (manifest.config.evalSplit ?? ConfigDefaults.evalSplit).split
        let evaluator = Evaluator(predictor: trainer.predictor(st), tokens: tokens)
        let before = try evaluator.row(domains.map { rows($0, evalSplit) })
        let oracle = Evaluator(predictor: RoutedPredictor(model: m, router: nil), tokens: tokens)
        var entries: [RemediationReport.Entry] = []
        var best = st.bestValidationF1
        for (j, d) in domains.enumerated() {
            var e = RemediationReport.Entry(domain: d.name, intents: d.classCount, diagnosis: nil, refit: nil,
                                            routedF1Before: before.routedF1[j], routedF1After: before.routedF1[j])
            if d.classCount > 1 {
                let val = rows(d, .val)
                let now = try oracle.oracleF1(domain: j, examples: val)
                let atLearning = j < best.count ? best[j] : now
                let diagnosis = try trainer.driftDiagnosis(st, domain: j, validation: val, headF1AtLearning: atLearning, headF1Now: now)
                e.diagnosis = diagnosis
                if diagnosis.kind == .alignmentDrift {
                    progress("remediate: domain \"\(d.name)\" is alignment drift (head drop \(String(format: "%.1f", 100 * diagnosis.headDrop)) points): refitting its gate")
                    let cfg = GateRefit.Config(steps: n, learningRate: settings.driftRefitLearningRate ?? settings.learningRate,
                                               batchSize: settings.batchSize, seed: FNV1a.of(d.name) &+ UInt64(manifest.version) &* 0x9E37)
                    let r = try trainer.refitGate(m, domain: j, items: st.bufferedItems(of: j), validation: val, config: cfg)
                    e.refit = GateRefit.Outcome(domain: d.name, diagnosis: diagnosis, examples: r.examples, validationF1Before: r.before,
                                                validationF1Candidate: r.candidate, kept: r.kept)
                    if r.kept {
                        try trainer.refreshStoredLogits(st, domain: j)
                        if j < best.count { best[j] = max(best[j], r.candidate) }
                    }
                }
            }
            entries.append(e)
        }
        var report = RemediationReport(version: manifest.version, steps: n, entries: entries, routerAccuracy: before.routerAccuracy)
        guard !report.changed.isEmpty else { return report }
        let after = try evaluator.row(domains.map { rows($0, evalSplit) })
        for j in report.entries.indices { report.entries[j].routedF1After = after.routedF1[j] }
        st.bestValidationF1 = best
        if var row = metrics.last {
            row.version = manifest.version + 1
            row.routedF1 = after.routedF1
            row.oracleF1 = after.oracleF1
            row.routedAccuracy = after.routedAccuracy
            row.oracleAccuracy = after.oracleAccuracy
            row.routerAccuracy = after.routerAccuracy
            row.remediated = report.changed
            row.createdAt = ISO8601DateFormatter().string(from: Date())
            metrics[metrics.count - 1] = row
        }
        return report
    }
}
