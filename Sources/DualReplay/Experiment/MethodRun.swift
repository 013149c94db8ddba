import Foundation

/// One method on one domain ordering: the sequential run (train a domain, evaluate every seen
/// domain, repeat) and the two references (joint: all domains at once; single: each alone).
struct MethodRun {
    let trainer: DomainTrainer
    let config: ExperimentConfig
    let order: Scenario
    let seed: UInt64
    let byteBudget: Int
    let generalTexts: [String]
    /// Each domain's validation rows (the forgetting signal) and evaluation rows (the R matrices),
    /// in `order`, chosen once.
    let valRows: [[IntentExample]]
    let evalRows: [[IntentExample]]

    init(trainer: DomainTrainer, config: ExperimentConfig, order: Scenario, seed: UInt64, byteBudget: Int, generalTexts: [String]) {
        self.trainer = trainer
        self.config = config
        self.order = order
        self.seed = seed
        self.byteBudget = byteBudget
        self.generalTexts = generalTexts
        let cap = config.data.maxEvalPerDomain, split = (config.evalSplit ?? ConfigDefaults.evalSplit).split
        valRows = order.domains.map { $0.evaluationRows(.val, cap: cap) }
        evalRows = order.domains.map { $0.evaluationRows(split, cap: cap) }
    }

    var settings: MethodSettings { trainer.settings }
    func progress(_ s: String) { trainer.progress(s) }

    func sequential() throws -> RunResult {
        let s = settings
        let st = try trainer.makeLearner(seed: seed, byteBudget: byteBudget, generalTexts: generalTexts)
        let m = st.model, evaluator = Evaluator(predictor: trainer.predictor(st), tokens: trainer.tokens)
        let K = order.count
        var routed = EvalMatrix(domains: order.domainNames), oracle = routed, racc = routed, oacc = routed
        var valF1: [[Double]] = [], routerAcc: [Double] = [], routerConfusion: [[Int]]? = nil
        var trainTime = 0.0, evalTime = 0.0, trained = 0, paramsPerDomain = 0
        let diagnose = config.diagnostics ?? ConfigDefaults.diagnostics
        var probeAtLearning: [Double] = []
        var times = PhaseTimes()
        // gathering across ranks during this run (the inference collective may outlive the run)
        let communicated = { (m.chunking?.communication ?? CommunicationStats()) + m.inference.communication }
        let communicatedBefore = communicated()
        var refits: [[GateRefit.Outcome]] = []
        for (k, d) in order.domains.enumerated() {
            let t0 = Date()
            let step = try trainer.learn(st, domain: d, validation: Array(valRows[0...k]), label: "\(k + 1)/\(K)")
            valF1.append(step.validationF1)
            times = times + step.times
            refits.append(step.gateRefits)
            trained += step.trained
            paramsPerDomain = step.parametersAdded
            let t1 = Date()
            trainTime += t1.timeIntervalSince(t0)
            let row = try evaluator.row(Array(evalRows[0...k]))
            for j in 0...k {
                routed[afterTraining: k, domain: j] = row.routedF1[j]
                oracle[afterTraining: k, domain: j] = row.oracleF1[j]
                racc[afterTraining: k, domain: j] = row.routedAccuracy[j]
                oacc[afterTraining: k, domain: j] = row.oracleAccuracy[j]
            }
            if let a = row.routerAccuracy { routerAcc.append(a) }
            routerConfusion = row.routerConfusion
            if diagnose { probeAtLearning.append(try probeF1(evaluator, domain: k)) }
            evalTime += Date().timeIntervalSince(t1)
            times.evaluation += Date().timeIntervalSince(t1)
            let rowText = row.routedF1.map { String(format: "%.1f", 100 * $0) }.joined(separator: " ")
            progress("  after \(k + 1)/\(K): routed F1 [\(rowText)]" + (row.routerAccuracy.map { String(format: " router acc %.1f%%", 100 * $0) } ?? ""))
        }
        var result = RunResult(method: s.name, kind: s.kind, orderingSeed: seed, domains: order.domainNames, routed: routed, oracle: oracle,
                               routedAccuracy: racc, oracleAccuracy: oacc, routerAccuracy: st.router == nil ? nil : routerAcc,
                               validationF1: valF1, ledger: st.buffer?.ledger, bufferBytesUsed: st.buffer?.bytesUsed,
                               trainableParameters: m.store.count - m.prototypeFloats, parametersPerNewDomain: paramsPerDomain,
                               trainSeconds: trainTime, evalSeconds: evalTime, trainExamplesPerSecond: Double(trained) / max(trainTime, 1e-9),
                               routerConfusion: routerConfusion, trainExamples: order.domains.map { $0.train.count },
                               intentCounts: order.domains.map { $0.intents.count })
        if s.driftRefitSteps != nil { result.gateRefits = refits }
        if diagnose {
            let t2 = Date(), last = K - 1
            result.probes = try (0..<last).map { j in
                ProbeDiagnosis(domain: order.domains[j].name, headF1AtLearning: oracle[afterTraining: j, domain: j],
                               headF1Now: oracle[afterTraining: last, domain: j], probeF1AtLearning: probeAtLearning[j],
                               probeF1Now: try probeF1(evaluator, domain: j))
            }
            result.multiIntent = try multiIntentScores(evaluator, routedAccuracy: racc)
            evalTime += Date().timeIntervalSince(t2)
            times.evaluation += Date().timeIntervalSince(t2)
            result.evalSeconds = evalTime
            progress("  diagnostics: " + (result.probes ?? []).map { "\($0.domain) \($0.kind.rawValue)" }.joined(separator: ", "))
        }
        let t3 = Date()
        if let lat = evaluator.latency(texts: order.domains.flatMap { $0.test.map(\.text) }, samples: config.latencySamples ?? ConfigDefaults.latencySamples) {
            result.latencyP50ms = lat.p50
            result.latencyP99ms = lat.p99
        }
        times.evaluation += Date().timeIntervalSince(t3)
        let moved = communicated() - communicatedBefore
        times.communication = moved.seconds
        result.timing = times
        if m.chunking != nil || m.inference.collective.size > 1 { result.communication = moved }
        if m.prototypeFloats > 0 { result.prototypeFloats = m.prototypeFloats }
        return result
    }

    /// The probe of domain `j` on at most `probeTrainPerDomain` of its training rows (a fixed subset).
    func probeF1(_ evaluator: Evaluator, domain j: Int) throws -> Double {
        let d = order.domains[j]
        let train = d.train.fixedSubset(atMost: config.probeTrainPerDomain ?? ConfigDefaults.probeTrainPerDomain,
                                        seed: FNV1a.of(d.name) &+ 0x9B0B)
        return try evaluator.probeF1(domain: j, train: train, test: evalRows[j])
    }

    /// Multi-intent fragility of every domain with multi-intent test rows, after the last domain.
    func multiIntentScores(_ evaluator: Evaluator, routedAccuracy: EvalMatrix) throws -> [MultiIntentScore] {
        let last = order.count - 1
        return try order.domains.enumerated().compactMap { j, d in
            guard !d.multiIntentTest.isEmpty else { return nil }
            let rows = d.multiIntentTest.fixedSubset(atMost: config.data.maxEvalPerDomain, seed: FNV1a.of(d.name) &+ 0x3017)
            let tau = try evaluator.chooseSetThreshold(domain: j, validation: setCalibrationRows(domain: j))
            return try evaluator.multiIntentScore(domain: j, rows: rows, singleIntentAccuracy: routedAccuracy[afterTraining: last, domain: j],
                                                  setThreshold: tau)
        }
    }

    /// The rows the set rule's threshold is chosen on for domain `j`: its validation rows (single
    /// intent) and as many multi-intent utterances synthesized from its validation split with the
    /// method's conjunctions (the defaults when augmentation is off). Validation only: the
    /// evaluated multi-intent rows (MixATIS/MixSNIPS) and every test row stay out of it.
    func setCalibrationRows(domain j: Int) -> [IntentExample] {
        let d = order.domains[j], a = settings.multiIntent ?? MultiIntentAugmentation()
        return valRows[j] + MultiIntentSynthesis.synthesize(d.val, domain: d.name, count: valRows[j].count, conjunctions: a.conjunctions,
                                                             maxIntents: a.maxIntents, salt: MultiIntentSynthesis.validationSalt)
    }

    // MARK: - references

    /// All domains at once (multi-task upper bound); one row in the matrices.
    func joint() throws -> RunResult {
        let s = settings
        let m = trainer.makeModel(seed: seed)
        let st = LearnerState(model: m, router: trainer.makeRouter(m), rng: SplitMix64(seed: seed &+ 0x1017))
        var rows: [TrainingRow] = [], synthesized: [TrainingRow] = []
        for (k, d) in order.domains.enumerated() {
            trainer.addDomain(m, d, rng: &st.rng)
            rows += trainer.trainingRows(d, domainIndex: k)
            synthesized += trainer.synthesizedRows(d, domainIndex: k)
        }
        // everything trains together: every gate row, every head, the shared adapter at full rate
        for slot in m.adapterLayers.indices { m.store.setTrainableRows(TensorName.gates(slot), nil) }
        m.store.setTrainableRows(TensorName.headWeight, nil)
        m.store.setTrainableRows(TensorName.headBias, nil)
        m.store.setTrainable(true) { $0.group == "head" || TensorName.isSharedAdapter($0.name) }
        m.sharedLRScale = 1
        m.rebuildViews()
        progress("\(s.name): all \(order.count) domains at once (\(rows.count) examples)")
        let t0 = Date()
        let n = try trainer.loop.run(m, s, optimizer: trainer.training.optimizer, examples: rows + synthesized, policies: trainer.policies,
                                     replay: { _, _, _ in }, rng: &st.rng, label: s.name)
        if let router = st.router {
            for k in order.domains.indices {
                try router.fitPrototypes(domain: k, examples: rows.filter { $0.domain == k }.map { ($0.ids, $0.label) })
            }
            try router.train(rows.map { ($0.ids, Int32($0.domain)) }, config: trainer.training.routerTraining,
                         optimizer: trainer.training.optimizer, rng: &st.rng)
        }
        let trainTime = Date().timeIntervalSince(t0)
        // one evaluation after training on everything: the last row of a T×T matrix
        var routed = EvalMatrix(domains: order.domainNames)
        var oracle = routed, racc = routed, oacc = routed
        let last = order.count - 1, t1 = Date()
        let row = try Evaluator(predictor: trainer.predictor(st), tokens: trainer.tokens).row(evalRows)
        for j in order.domains.indices {
            routed.f1[last][j] = row.routedF1[j]; oracle.f1[last][j] = row.oracleF1[j]
            racc.f1[last][j] = row.routedAccuracy[j]; oacc.f1[last][j] = row.oracleAccuracy[j]
        }
        return RunResult(method: s.name, kind: s.kind, orderingSeed: seed, domains: order.domainNames, routed: routed, oracle: oracle,
                         routedAccuracy: racc, oracleAccuracy: oacc, routerAccuracy: nil, validationF1: [], ledger: nil, bufferBytesUsed: nil,
                         trainableParameters: m.store.count - m.prototypeFloats, parametersPerNewDomain: 0, trainSeconds: trainTime,
                         evalSeconds: Date().timeIntervalSince(t1), trainExamplesPerSecond: Double(n) / max(trainTime, 1e-9),
                         intentCounts: order.domains.map(\.classCount))
    }

    /// Each domain alone from a fresh model: oracle F1 per domain (FWT's reference).
    func single() throws -> [String: Double] {
        var out: [String: Double] = [:]
        for (k, d) in order.domains.enumerated() {
            let m = trainer.makeModel(seed: seed &+ UInt64(k))
            var rng = SplitMix64(seed: seed &+ UInt64(k) &+ 0x5146)
            trainer.addDomain(m, d, rng: &rng, alone: true)
            progress("\(settings.name): domain \(k + 1)/\(order.count) '\(d.name)' alone")
            _ = try trainer.loop.run(m, settings, optimizer: trainer.training.optimizer, examples: trainer.trainingRows(d, domainIndex: 0, labelOffset: 0)
                                         + trainer.synthesizedRows(d, domainIndex: 0, labelOffset: 0),
                                     policies: trainer.policies, replay: { _, _, _ in }, rng: &rng, label: settings.name)
            let e = Evaluator(predictor: RoutedPredictor(model: m, router: nil), tokens: trainer.tokens)
            out[d.name] = try e.oracleF1(domain: 0, examples: evalRows[k])
        }
        return out
    }
}
