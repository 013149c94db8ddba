import Foundation
import Testing
@testable import DualReplay

/// The experiment runner end to end on the real encoder and a small synthetic scenario, and the
/// config's validation.
@Suite(.serialized) struct RunnerTests {
    static func encoder() throws -> SentenceEncoder {
        let dir = try TestPaths.require(TestPaths.model.appendingPathComponent("model.safetensors")).deletingLastPathComponent()
        return try SentenceEncoder(modelDirectory: dir, maxLength: 32)
    }

    static func smallConfig(_ methods: [MethodConfig]) -> ExperimentConfig {
        var cfg = ExperimentConfig(
            name: "test",
            data: DataConfig(synthetic: SyntheticConfig(domains: 3, intentsPerDomain: 4, trainPerIntent: 16, valPerIntent: 4,
                                                        testPerIntent: 6, seed: 3)),
            methods: methods)
        cfg.orderings = 1
        cfg.latencySamples = 0
        var t = TrainingDefaults()
        t.epochs = 4
        t.batchSize = 16
        t.learningRate = 5e-3
        t.bufferExamples = 40
        t.maxLength = 32
        t.routerTraining.epochs = 10
        cfg.training = t
        return cfg
    }

    /// Without replay, the newest domain's head wins every argmax over all seen intents: old
    /// domains collapse (a large negative BWT). One reservoir buffer must measurably prevent it.
    @Test func replayMeasurablyReducesForgetting() throws {
        let enc = try Self.encoder()
        var cfg = Self.smallConfig([MethodConfig(kind: .lora), MethodConfig(kind: .loraReplay)])
        cfg.references = [MethodConfig(kind: .joint), MethodConfig(kind: .single)]
        try cfg.validate()
        let (scenario, general) = try ExperimentSetup.scenario(cfg.data)
        let runner = ExperimentRunner(config: cfg, scenario: scenario, encoder: enc, generalTexts: general, codeVersion: "test")
        let results = try runner.run()
        let noReplay = results.summaries.first { $0.kind == .lora }!, replay = results.summaries.first { $0.kind == .loraReplay }!
        let bwt0 = noReplay.routed.backwardTransfer.mean, bwt1 = replay.routed.backwardTransfer.mean
        #expect(bwt1 > bwt0 + 0.15, "routed BWT without replay \(bwt0), with replay \(bwt1)")
        #expect(replay.routed.averageF1.mean > noReplay.routed.averageF1.mean + 0.1)
        // the buffer stayed within the byte budget, and every run recorded its ledger
        let run = results.runs.first { $0.kind == .loraReplay }!
        #expect((run.bufferBytesUsed ?? .max) <= runner.byteBudget)
        #expect(run.ledger?.entries.count == scenario.count)
        // the matrix is lower-triangular: R[i][j] defined exactly for j <= i
        for i in 0..<scenario.count { for j in 0..<scenario.count { #expect(run.routed.f1[i][j].isNaN == (j > i)) } }
        // results serialise with their schema and protocol hash
        let json = try JSONEncoder().encode(results)
        let back = try JSONDecoder().decode(ExperimentResults.self, from: json)
        #expect(back.schema == "dualreplay.results/1" && back.experimentProtocol.hash.count == 16)
        #expect(ResultsReport.markdown(results).contains("| lora-replay |"))
        // the references: joint's per-domain F1 and single's, then FWT and intransigence exist
        #expect(results.jointF1?.count == scenario.count && results.singleF1?.count == scenario.count)
        #expect(replay.routed.forwardTransfer != nil && replay.routed.intransigence != nil)
        let joint = results.runs.first { $0.kind == .joint }!
        #expect(joint.oracle.averageF1 > 0.5, "joint oracle F1 \(joint.oracle.averageF1)")
    }

    /// A references-only experiment (no method: the joint reference at its own epoch count, the
    /// step-matched upper bound) runs, and its epochs are its own.
    @Test func referencesOnlyExperimentRunsTheJointAtItsOwnEpochs() throws {
        let enc = try Self.encoder()
        func joint(epochs: Int?) throws -> (ExperimentResults, RunResult) {
            var cfg = Self.smallConfig([])
            var j = MethodConfig(kind: .joint)
            j.training.epochs = epochs
            cfg.references = [j]
            try cfg.validate()
            let (scenario, general) = try ExperimentSetup.scenario(cfg.data)
            let results = try ExperimentRunner(config: cfg, scenario: scenario, encoder: enc, generalTexts: general, codeVersion: "test").run()
            return (results, try #require(results.runs.first { $0.kind == .joint }))
        }
        let (results, short) = try joint(epochs: 1)
        #expect(results.summaries.isEmpty && results.runs.count == 1 && results.comparisons == nil)
        #expect(results.jointF1?.count == 3)
        #expect(ResultsReport.markdown(results).contains("joint"))
        let (_, long) = try joint(epochs: 6)
        // examples trained = rate × seconds (how the run records it): 6 epochs are 6 × 1 epoch
        let trained = { (r: RunResult) in Int((r.trainExamplesPerSecond * r.trainSeconds).rounded()) }
        #expect(trained(short) > 0 && trained(long) == 6 * trained(short), "examples trained: 1 epoch \(trained(short)), 6 epochs \(trained(long))")
        #expect(long.oracle.averageF1 > 0.5, "joint oracle F1 after 6 epochs \(long.oracle.averageF1)")
    }

    /// Dual-Replay's pieces run together: gates, dual buffer (domain + general stream with its
    /// anchoring loss), router; floors hold and the ledger records quotas after every domain.
    @Test func dualReplayRunsWithRouterAndLedger() throws {
        let enc = try Self.encoder()
        var m = MethodConfig(kind: .dualReplay)
        m.adapter.bottleneck = 16
        m.loss.logitReplay = 0.5
        let cfg = Self.smallConfig([m])
        let (scenario, general) = try ExperimentSetup.scenario(cfg.data)
        let runner = ExperimentRunner(config: cfg, scenario: scenario, encoder: enc, generalTexts: general, codeVersion: "test")
        let results = try runner.run()
        let run = results.runs[0]
        #expect(run.routerAccuracy?.count == scenario.count)
        #expect((run.routerAccuracy?.last ?? 0) > 0.6, "router accuracy \(run.routerAccuracy ?? [])")
        #expect(run.routed.averageF1 > 0.5 && run.oracle.averageF1 > 0.5, "F1 routed \(run.routed.averageF1) oracle \(run.oracle.averageF1)")
        let ledger = try #require(run.ledger)
        #expect(ledger.entries.count == scenario.count)
        for e in ledger.entries {
            #expect(e.totalBytes <= runner.byteBudget)
            for d in e.domains { #expect(d.items >= 1) }
            #expect(e.generalItems > 0)
        }
        // a new domain adds exactly one gate row per adapter layer and one head
        let layers = enc.config.layers, intents = 4
        #expect(run.parametersPerNewDomain == layers * 16 + intents * enc.config.hidden + intents)
    }

    /// The MLP router sees earlier domains only through the buffer; the intent prototypes were
    /// fitted on every training utterance of their domain and never go stale. With a buffer of a
    /// few utterances per domain, prototype routing must route better than the MLP alone, on the
    /// same trained adapter (prototypes do not change training: the oracle matrices are equal).
    @Test func prototypeRoutingOutlastsAStarvedRouter() throws {
        let enc = try Self.encoder()
        var off = MethodConfig(kind: .dualReplay), only = off
        off.name = "mlp"
        off.router.prototypes.mode = .off
        only.name = "proto"
        only.router.prototypes.mode = .only
        var cfg = Self.smallConfig([off, only])
        cfg.data.synthetic?.domains = 4
        cfg.training?.bufferExamples = 12
        cfg.training?.routerTraining.newDomainExamples = 12
        cfg.training?.epochs = 2
        let (scenario, general) = try ExperimentSetup.scenario(cfg.data)
        let runner = ExperimentRunner(config: cfg, scenario: scenario, encoder: enc, generalTexts: general, codeVersion: "test")
        let results = try runner.run()
        let mlp = results.runs[0], proto = results.runs[1]
        #expect(zip(mlp.oracle.f1.joined(), proto.oracle.f1.joined()).allSatisfy { $0 == $1 || ($0.isNaN && $1.isNaN) })
        let a0 = mlp.routerAccuracy?.last ?? 1, a1 = proto.routerAccuracy?.last ?? 0
        print("router accuracy: MLP \(mlp.routerAccuracy ?? []), prototypes \(proto.routerAccuracy ?? [])")
        #expect(a1 > a0 && a1 > 0.9, "router accuracy: MLP \(a0), prototypes \(a1)")
        #expect(proto.prototypeFloats == 4 * 4 * enc.config.hidden && mlp.prototypeFloats == nil)
        #expect(proto.trainableParameters == mlp.trainableParameters)
        let md = ResultsReport.markdown(results)
        #expect(md.contains("proto: the router's intent prototypes hold \(4 * 4 * enc.config.hidden) floats") && !md.contains("mlp: the router's"))
    }

    /// Diagnostics of a run: the probe's head F1 are the oracle matrix's diagonal and last row, the
    /// probe still decodes old domains from the (frozen-base) features, multi-intent rows are scored.
    @Test func diagnosticsProbeAndMultiIntent() throws {
        let enc = try Self.encoder()
        var cfg = Self.smallConfig([MethodConfig(kind: .dualReplay)])
        cfg.data.synthetic?.multiIntentTestPerDomain = 6
        cfg.diagnostics = true
        cfg.probeTrainPerDomain = 40
        try cfg.validate()
        let (scenario, general) = try ExperimentSetup.scenario(cfg.data)
        let runner = ExperimentRunner(config: cfg, scenario: scenario, encoder: enc, generalTexts: general, codeVersion: "test")
        let results = try runner.run()
        let run = try #require(results.runs.first)
        let K = scenario.count, probes = try #require(run.probes), multi = try #require(run.multiIntent)
        #expect(probes.count == K - 1)
        for (j, p) in probes.enumerated() {
            #expect(p.domain == run.domains[j])
            #expect(p.headF1AtLearning == run.oracle.f1[j][j] && p.headF1Now == run.oracle.f1[K - 1][j])
            #expect(p.probeF1AtLearning > 0.8 && p.probeF1Now > 0.8, "\(p)")
            #expect(p.kind == ProbeDiagnosis.classify(headDrop: p.headDrop, probeDrop: p.probeDrop))
        }
        #expect(multi.map(\.domain) == run.domains && multi.allSatisfy { $0.count == 6 })
        for (j, m) in multi.enumerated() {
            #expect(m.singleIntentAccuracy == run.routedAccuracy.f1[K - 1][j])
            #expect((0...1).contains(m.anyHit) && m.domainHit >= m.anyHit)
        }
        let md = ResultsReport.markdown(results)
        #expect(md.contains("### Diagnostics") && md.contains("| dual-replay | \(K - 1) |"))
    }

    @Test func configErrorsNameTheFieldAndFile() throws {
        let dir = try TestPaths.tempDir()
        defer { try? FileManager.default.removeItem(at: dir) }
        func write(_ s: String, _ name: String = "c.json") throws -> URL {
            let u = dir.appendingPathComponent(name)
            try Data(s.utf8).write(to: u)
            return u
        }
        let good = #"{"name":"x","data":{"synthetic":{"domains":2,"trainPerIntent":4}},"methods":[{"kind":"dual-replay"}]}"#
        _ = try ExperimentConfig.load(try write(good))
        let referencesOnly = #"{"name":"x","data":{"synthetic":{"domains":2}},"methods":[],"references":[{"kind":"joint","training":{"epochs":5}}]}"#
        #expect(try ExperimentConfig.load(try write(referencesOnly, "refs.json")).references?.first?.training.epochs == 5)
        let cases: [(String, String)] = [
            (#"{"name":"x","data":{},"methods":[{"kind":"dual-replay"}]}"#, "data"),
            (#"{"name":"x","data":{"synthetic":{}},"methods":[]}"#, "methods"),
            (#"{"name":"x","data":{"files":[{"path":"a.jsonl"}]},"methods":[{"kind":"nope"}]}"#, "kind"),
            (#"{"name":"x","data":{"files":[{"path":"a.jsonl"}]},"methods":[{"kind":"lora","training":{"epochs":0}}]}"#, "training.epochs"),
            (#"{"name":"x","data":{"files":[{"path":"a.jsonl"}]},"methods":[{"kind":"lora"}],"evalSplit":"train"}"#, "evalSplit"),
            (#"{"name":"x","schemaVersion":9,"data":{"files":[{"path":"a.jsonl"}]},"methods":[{"kind":"lora"}]}"#, "schemaVersion"),
            (#"{"data":{"files":[{"path":"a.jsonl"}]},"methods":[{"kind":"lora"}]}"#, "name"),
            (#"{"name":"x","data":{"files":[{"path":"a.jsonl"}]},"methods":[{"kind":"lora"},{"kind":"lora"}]}"#, "named"),
            ("{not json", "JSON"),
            (#"{"name":"x","data":{"synthetic":{}},"methods":[{"kind":"dual-replay","heads":{"realignLearningRate":0}}]}"#, "heads.realignLearningRate"),
            (#"{"name":"x","data":{"synthetic":{}},"methods":[{"kind":"dual-replay","router":{"prototypes":{"mode":"knn"}}}]}"#, "router.prototypes.mode"),
        ]
        for (i, (text, field)) in cases.enumerated() {
            let url = try write(text, "bad\(i).json")
            do {
                _ = try ExperimentConfig.load(url)
                Issue.record("case \(i) was accepted")
            } catch {
                let msg = error.localizedDescription
                #expect(msg.contains("bad\(i).json") && msg.contains(field), "case \(i): \(msg)")
            }
        }
        // YAML through the same types
        let yaml = try write("name: y\ndata:\n  files:\n    - path: clinc150/clinc150.jsonl\nmethods:\n  - kind: der\n    loss:\n      logitReplay: 0.3\n", "c.yaml")
        let cfg = try ExperimentConfig.load(yaml)
        #expect(cfg.methods[0].kind == .der && cfg.methods[0].loss.logitReplay == 0.3)
    }
}

/// The shared adapter's learning-rate multiplier after the first domain (`sharedLearningRateScale`).
@Suite struct SharedAdapterScaleTests {
    typealias S = StateTests

    /// Domain a's oracle logits (gate 0, head 0) after a, and after b and c were trained.
    static func logitsOfA(scale: Float?) throws -> (before: [UInt32], after: [UInt32], sharedTrains: Bool) {
        var cfg = S.config()
        cfg.methods[0].adapter.sharedLearningRateScale = scale
        cfg.methods[0].heads.freezeOld = true
        let st = try ContinualState.create(config: cfg, encoder: try S.encoder(), generalTexts: S.general, modelPath: nil)
        let seqs: [[Int32]] = [[1, 4, 34, 35, 2], [1, 6, 31, 2], [1, 8, 30, 33, 2]]
        let gates = [Int32](repeating: 0, count: seqs.count)
        _ = try st.onboard(S.domain("a", base: 0))
        let before = st.model.logits(seqs, gateIds: gates)
        _ = try st.onboard(S.domain("b", base: 6))
        _ = try st.onboard(S.domain("c", base: 12))
        // logits are (B, V): domain a's classes are the first 3 of each row
        let all = st.model.logits(seqs, gateIds: gates), V = st.model.classCount
        let after = (0..<seqs.count).flatMap { b in all[(b * V)..<(b * V + 3)] }
        let shared = st.model.store.tensors.filter { TensorName.isSharedAdapter($0.name) }
        return (before.map(\.bitPattern), after.map(\.bitPattern), shared.allSatisfy(\.trainable))
    }

    /// Frozen shared adapter, old gates and old heads: a finished domain's oracle outputs cannot
    /// change (zero oracle forgetting by construction); at full rate they do.
    @Test func frozenSharedAdapterKeepsOldDomainOutputsExactly() throws {
        let frozen = try Self.logitsOfA(scale: 0)
        #expect(frozen.before == frozen.after && !frozen.sharedTrains)
        let full = try Self.logitsOfA(scale: nil)
        #expect(full.before != full.after && full.sharedTrains)
        let slow = try Self.logitsOfA(scale: 0.1)
        #expect(slow.before != slow.after && slow.sharedTrains)
    }

    @Test func scalesMultiplyTheStepOfTheirSegment() throws {
        let store = ParameterStore()
        store.add("x", shape: [4], group: "adapter") { _ in 1 }
        store.add("y", shape: [4], group: "adapter") { _ in 1 }
        for i in 0..<8 { store.grads.base[i] = 0.5 }
        var cfg = OptimizerConfig()
        cfg.weightDecay = 0
        cfg.clipNorm = 0
        let segs = store.trainableSegments()
        AdamWStep(config: cfg).apply(store, segments: segs, lr: 0.1, t: 1, scales: [0, 0.5])
        for i in 0..<4 { #expect(store.values.base[i] == 1) }
        // the first Adam step moves by lr·scale (bias-corrected m/√v = 1)
        for i in 4..<8 { #expect(abs(store.values.base[i] - (1 - 0.05)) < 1e-5) }
    }
}

/// Stored logits are computed for the items a buffer keeps, after it chose them
/// (`DomainTrainer.updateBuffers`): for the last domain learned they are the model's logits on
/// those items, bit for bit, for the dual stream (dual-replay) and the reservoir (der).
@Suite struct StoredLogitTests {
    typealias S = StateTests

    @Test(arguments: [MethodKind.dualReplay, .der])
    func storedLogitsAreTheModelsOnTheKeptItems(_ kind: MethodKind) throws {
        var cfg = S.config()
        cfg.methods[0].kind = kind
        let st = try ContinualState.create(config: cfg, encoder: try S.encoder(), generalTexts: S.general, modelPath: nil)
        _ = try st.onboard(S.domain("a", base: 0))
        let b = S.domain("b", base: 6)
        _ = try st.onboard(b)
        let m = st.model
        let held: [ReplayItem]
        if let dual = st.learner.dual { held = dual.items(of: 1) } else { held = try #require(st.learner.reservoir).items.filter { $0.domain == 1 } }
        #expect(!held.isEmpty && held.count < b.train.count)  // a strict subset: the rest needed no logits
        let expected = try m.domainLogits(held.map(\.tokenIds), domain: 1)
        #expect(held.map { $0.logits!.map(\.bitPattern) } == expected.map { $0.map(\.bitPattern) })
        #expect(held.allSatisfy { $0.logits!.count == m.domains[1].intents.count && $0.logits!.contains { $0 != 0 } })
    }
}

/// Head realignment (`realignHeadSteps`): refitting an old head on its buffered examples lowers
/// their loss and touches nothing but that head.
@Suite struct HeadRealignmentTests {
    typealias S = StateTests

    @Test func realignmentLowersBufferedLossAndTouchesOnlyTheHead() throws {
        let st = try ContinualState.create(config: S.config(), encoder: try S.encoder(), generalTexts: S.general, modelPath: nil)
        _ = try st.onboard(S.domain("a", base: 0))
        _ = try st.onboard(S.domain("b", base: 6))
        let m = st.model
        let items = try #require(st.learner.dual).items(of: 0)
        #expect(items.count >= 2)
        // scramble head a (its rows of the head layer) a little, as drifting features would misalign it
        let C = m.config.hidden, rowsA = m.domains[0].classRange
        var rng = SplitMix64(seed: 9)
        m.store.withValues(TensorName.headWeight) { w in for i in (rowsA.lowerBound * C)..<(rowsA.upperBound * C) { w[i] += 0.5 * rng.nextGaussian() } }
        func loss() -> Double {
            let lg = m.logits(items.map(\.tokenIds), gateIds: [Int32](repeating: 0, count: items.count))
            let V = m.classCount, r = m.domains[0].classRange
            var total = 0.0
            for (b, it) in items.enumerated() {
                let row = r.map { Double(lg[b * V + $0]) }, mx = row.max()!
                total += log(row.reduce(0) { $0 + exp($1 - mx) }) + mx - Double(lg[b * V + Int(it.label)])
            }
            return total / Double(items.count)
        }
        // everything but head a's rows
        func untouched() -> [[Float]] {
            m.store.tensors.map { t in
                let v = m.store.array(t.name)
                switch t.name {
                case TensorName.headWeight: return Array(v[(rowsA.upperBound * C)...])
                case TensorName.headBias: return Array(v[rowsA.upperBound...])
                default: return v
                }
            }
        }
        let before = loss(), others = untouched()
        var settings = st.settings
        settings.realignHeadSteps = 50
        settings.realignLearningRate = 5e-3
        let trainer = DomainTrainer(settings: settings, training: TrainingDefaults(), encoder: st.encoder,
                                    tokens: TokenCache(tokenizer: st.encoder.tokenizer, maxLength: 64))
        try trainer.realignHead(m, domain: 0, items: items)
        #expect(loss() < before * 0.8, "buffered loss \(before) -> \(loss())")
        #expect(untouched() == others)
    }
}
