import Foundation
import Testing
@testable import DualReplay

/// The experiment config: nested method blocks, strict decoding (JSON and YAML), the defaults
/// table, bounds, safe names, the memory check, and the migrated bench experiments.
@Suite struct ConfigTests {
    static let experiments = TestPaths.packageRoot.appendingPathComponent("bench/experiments")

    /// Writes `text` to a fresh file and returns the error message of loading it (nil: it loaded).
    static func loadError(_ text: String, file: String = "x.json") throws -> String? {
        let dir = try TestPaths.tempDir()
        defer { try? FileManager.default.removeItem(at: dir) }
        let url = dir.appendingPathComponent(file)
        try Data(text.utf8).write(to: url)
        do {
            _ = try ExperimentConfig.load(url)
            return nil
        } catch {
            return error.localizedDescription
        }
    }

    /// A valid config with `method` as its only method, `top` spliced into the top level.
    static func json(method: String = #"{"kind": "dual-replay"}"#, data: String = #"{"synthetic": {"domains": 2}}"#,
                     top: String = "") -> String {
        #"{"name": "x", "data": \#(data), "methods": [\#(method)]\#(top.isEmpty ? "" : ", " + top)}"#
    }

    // MARK: - The bench experiments

    @Test func everyBenchExperimentLoadsAndResolves() throws {
        let files = try FileManager.default.contentsOfDirectory(atPath: Self.experiments.path).filter { $0.hasSuffix(".json") }.sorted()
        #expect(files.count >= 14)
        for f in files {
            let cfg = try ExperimentConfig.load(Self.experiments.appendingPathComponent(f))
            #expect(cfg.schemaVersion == ExperimentConfig.schemaVersion, "\(f)")
            let settings = try cfg.resolvedMethods()
            #expect(settings.count == cfg.methods.count + (cfg.references?.count ?? 0), "\(f)")
        }
    }

    /// The golden file holds what every method of every bench experiment resolved to in the flat
    /// (schema 1) format, before the migration (optionals replaced by the defaults the runner
    /// applied to them). The migrated files must resolve to exactly the same settings.
    @Test func migratedExperimentsResolveAsTheFlatFilesDid() throws {
        let golden = TestPaths.packageRoot.appendingPathComponent("Tests/Fixtures/bench-experiments-resolved.jsonl")
        struct Row: Decodable { let file: String; let settings: MethodSettings }
        var expected: [String: [MethodSettings]] = [:]
        for line in try String(contentsOf: try TestPaths.require(golden), encoding: .utf8).split(separator: "\n") {
            let row = try JSONDecoder().decode(Row.self, from: Data(line.utf8))
            expected[row.file, default: []].append(row.settings)
        }
        // configs added after the migration have no flat form; every migrated one must still be here
        let files = try FileManager.default.contentsOfDirectory(atPath: Self.experiments.path).filter { $0.hasSuffix(".json") }
        #expect(Set(expected.keys).isSubset(of: Set(files)))
        #expect(expected.count >= 14)
        for f in expected.keys.sorted() {
            let got = try ExperimentConfig.load(Self.experiments.appendingPathComponent(f)).resolvedMethods()
            let want = expected[f] ?? []
            #expect(got.count == want.count, "\(f)")
            for (g, w) in zip(got, want) { #expect(g == w, "\(f): \(g.name)") }
        }
    }

    // MARK: - Unknown keys, at every level

    @Test func unknownKeysNameTheFileThePathAndTheNearestKey() throws {
        let cases: [(text: String, at: String, key: String, suggestion: String?)] = [
            (Self.json(top: #""orderngs": 2"#), "(top level)", "orderngs", "orderings"),
            (Self.json(data: #"{"synthetic": {}, "maxTrainPerDomian": 5}"#), "data", "maxTrainPerDomian", "maxTrainPerDomain"),
            (Self.json(data: #"{"files": [{"path": "a.jsonl", "mutliLabel": "keep"}]}"#), "data.files[0]", "mutliLabel", "multiLabel"),
            (Self.json(data: #"{"multiIntentFiles": [{"path": "a.jsonl", "unknownLabel": "drop"}], "synthetic": {}}"#),
             "data.multiIntentFiles[0]", "unknownLabel", "unknownLabels"),
            (Self.json(data: #"{"synthetic": {"domain": 2}}"#), "data.synthetic", "domain", "domains"),
            (Self.json(top: #""training": {"epoch": 2}"#), "training", "epoch", "epochs"),
            (Self.json(top: #""training": {"optimizer": {"weightDecy": 0}}"#), "training.optimizer", "weightDecy", "weightDecay"),
            (Self.json(top: #""training": {"routerTraining": {"balance": false}}"#), "training.routerTraining", "balance", "balanced"),
            (Self.json(method: #"{"kind": "dual-replay", "adaptor": {}}"#), "methods[0] (dual-replay)", "adaptor", "adapter"),
            (Self.json(method: #"{"kind": "dual-replay", "adapter": {"bottlenek": 32}}"#), "methods[0].adapter", "bottlenek", "bottleneck"),
            (Self.json(method: #"{"kind": "lora", "training": {"batchsize": 8}}"#), "methods[0].training", "batchsize", "batchSize"),
            (Self.json(method: #"{"kind": "lora", "heads": {"freezeOldHeads": true}}"#), "methods[0].heads", "freezeOldHeads", "freezeOld"),
            (Self.json(method: #"{"kind": "lora", "router": {"enable": true}}"#), "methods[0].router", "enable", "enabled"),
            (Self.json(method: #"{"kind": "lora", "router": {"prototypes": {"mod": "off"}}}"#), "methods[0].router.prototypes", "mod", "mode"),
            (Self.json(method: #"{"kind": "lora", "router": {"rescore": {"topk": 2}}}"#), "methods[0].router.rescore", "topk", "topK"),
            (Self.json(method: #"{"kind": "lora", "lora": {"rnak": 4}}"#), "methods[0].lora", "rnak", "rank"),
            (Self.json(method: #"{"kind": "lora", "loss": {"anchr": 0}}"#), "methods[0].loss", "anchr", "anchor"),
            (Self.json(method: #"{"kind": "lora", "replay": {"shares": 0.1}}"#), "methods[0].replay", "shares", "share"),
            (Self.json(method: #"{"kind": "lora", "replay": {"zzzzzzzzzzzz": 1}}"#), "methods[0].replay", "zzzzzzzzzzzz", nil),
        ]
        for c in cases {
            let msg = try #require(try Self.loadError(c.text, file: "typo.json"), "accepted: \(c.text)")
            let hint = c.suggestion.map { " (did you mean \"\($0)\"?)" } ?? ""
            #expect(msg.hasSuffix("typo.json: \(c.at): unknown field \"\(c.key)\"\(hint)"), "\(msg)")
            if c.suggestion == nil { #expect(!msg.contains("did you mean"), "\(msg)") }
        }
        // references are methods too
        let ref = Self.json(top: #""references": [{"kind": "joint", "architecure": "lora"}]"#)
        #expect(try Self.loadError(ref)?.contains(#"references[0] (joint): unknown field "architecure" (did you mean "architecture"?)"#) == true)
    }

    @Test func yamlIsDecodedAsStrictly() throws {
        let good = "name: y\ndata:\n  synthetic:\n    domains: 2\nmethods:\n  - kind: der\n    loss:\n      logitReplay: 0.3\n"
        #expect(try Self.loadError(good, file: "c.yaml") == nil)
        let typo = "name: y\ndata:\n  synthetic: {}\nmethods:\n  - kind: dual-replay\n    adapter:\n      bottlenek: 32\n"
        #expect(try Self.loadError(typo, file: "c.yaml")?.hasSuffix(#"c.yaml: methods[0].adapter: unknown field "bottlenek" (did you mean "bottleneck"?)"#) == true)
        let top = "name: y\ndata:\n  synthetic: {}\n  maxEvalPerDomin: 3\nmethods:\n  - kind: lora\n"
        #expect(try Self.loadError(top, file: "c.yml")?.contains(#"data: unknown field "maxEvalPerDomin" (did you mean "maxEvalPerDomain"?)"#) == true)
        let flat = "name: y\ndata:\n  synthetic: {}\nmethods:\n  - kind: dual-replay\n    bottleneck: 8\n"
        #expect(try Self.loadError(flat, file: "c.yaml")?.contains(#"field "bottleneck" moved: use "adapter": {"bottleneck": ...}"#) == true)
        let choice = "name: y\ndata:\n  synthetic: {}\nmethods:\n  - kind: dual-replay\n    loss:\n      scope: all\n"
        let msg = try #require(try Self.loadError(choice, file: "c.yaml"))
        #expect(msg.contains("c.yaml") && msg.contains("methods[0].loss.scope") && msg.contains(#""domain", "seen""#), "\(msg)")
    }

    @Test func duplicateJSONKeysAreRefused() throws {
        let msg = try #require(try Self.loadError(Self.json(method: #"{"kind": "lora", "kind": "der"}"#)))
        #expect(msg.contains("x.json") && msg.contains(#"duplicate key "kind""#), "\(msg)")
    }

    // MARK: - The flat format

    @Test func everyOldFlatFieldNamesItsNewPlace() throws {
        #expect(MovedFields.table.count == 37 && Set(MovedFields.table.map(\.old)).count == 37)
        let moved = MovedFields.table.filter { $0.old != $0.new }
        #expect(moved.count == 34)
        for (old, new) in moved {
            let value = old == "router" ? "true" : "1"
            let msg = try #require(try Self.loadError(Self.json(method: #"{"kind": "dual-replay", "\#(old)": \#(value)}"#)), "\(old)")
            // "adapter.bottleneck" is shown as "adapter": {"bottleneck": ...}
            let keys = new.split(separator: ".")
            let inner = keys.dropFirst().reversed().reduce("...") { "{\"\($1)\": \($0)}" }
            let expected = old == "router" ? #""router": {"enabled": true}"# : "\"\(keys[0])\": \(inner)"
            #expect(msg.hasSuffix(#"x.json: methods[0] (dual-replay): field "\#(old)" moved: use \#(expected)"#), "\(msg)")
        }
        // the example of the docs, with the method's name as its label
        let named = Self.json(method: #"{"kind": "dual-replay", "name": "dr-v1", "routerRescoreThreshold": 0.5}"#)
        #expect(try Self.loadError(named)?.hasSuffix(
            #"methods[0] (dr-v1): field "routerRescoreThreshold" moved: use "router": {"rescore": {"threshold": ...}}"#) == true)
    }

    @Test func schemaVersionOneIsRefusedWithTheMigrationHint() throws {
        let msg = try #require(try Self.loadError(Self.json(top: #""schemaVersion": 1"#)))
        #expect(msg.contains("schemaVersion") && msg.contains("version 2") && msg.contains("flat method format"), "\(msg)")
        #expect(try Self.loadError(Self.json(top: #""schemaVersion": 2"#)) == nil)
        #expect(try Self.loadError(Self.json(top: #""schemaVersion": 3"#))?.contains("schemaVersion") == true)
    }

    // MARK: - Enums

    @Test func enumErrorsNameTheFieldTheFileAndTheAllowedValues() throws {
        let cases: [(text: String, field: String, allowed: [String])] = [
            (Self.json(method: #"{"kind": "dual"}"#), "methods[0].kind", MethodKind.allCases.map(\.rawValue)),
            (Self.json(method: #"{"kind": "dual-replay", "adapter": {"placement": "input"}}"#), "methods[0].adapter.placement", ["output", "ffn"]),
            (Self.json(method: #"{"kind": "dual-replay", "adapter": {"activation": "tanh"}}"#), "methods[0].adapter.activation",
             ["gelu", "relu", "identity"]),
            (Self.json(method: #"{"kind": "dual-replay", "adapter": {"gateInit": "zeros"}}"#), "methods[0].adapter.gateInit", ["ones", "mask"]),
            (Self.json(method: #"{"kind": "dual-replay", "router": {"prototypes": {"mode": "knn"}}}"#), "methods[0].router.prototypes.mode",
             ["off", "only", "fused"]),
            (Self.json(method: #"{"kind": "joint", "architecture": "mlp"}"#), "methods[0].architecture", ["adapter", "lora"]),
            (Self.json(method: #"{"kind": "lora", "loss": {"scope": "all"}}"#), "methods[0].loss.scope", ["domain", "seen"]),
            (Self.json(top: #""evalSplit": "train""#), "evalSplit", ["test", "val"]),
            (Self.json(data: #"{"files": [{"path": "a.jsonl", "multiLabel": "first"}]}"#), "data.files[0].multiLabel",
             ["drop", "keep", "separate"]),
            (Self.json(data: #"{"files": [{"path": "a.jsonl", "unknownLabels": "keep"}]}"#), "data.files[0].unknownLabels", ["reject", "drop"]),
            (Self.json(top: #""training": {"optimizer": {"decay": "step"}}"#), "training.optimizer.decay", ["constant", "linear", "cosine"]),
        ]
        for c in cases {
            let msg = try #require(try Self.loadError(c.text, file: "enum.json"), "\(c.field)")
            #expect(msg.contains("enum.json: field `\(c.field)`: "), "\(msg)")
            #expect(msg.contains(" is not one of " + c.allowed.map { "\"\($0)\"" }.joined(separator: ", ")), "\(msg)")
        }
        // the enum is typed in Swift: the resolved view reads it without string compares
        var m = MethodConfig(kind: .lora)
        m.loss.scope = .domain
        #expect(try MethodSettings.resolve(m, training: TrainingDefaults()).lossOverSeen == false)
    }

    // MARK: - Bounds

    @Test func sizesOutsideTheirBoundsAreRefused() throws {
        let m = { (block: String) in Self.json(method: #"{"kind": "dual-replay", \#(block)}"#) }
        let cases: [(String, String)] = [
            (m(#""adapter": {"bottleneck": 1000000000}"#), "methods[dual-replay].adapter.bottleneck`: must be in 1...4096, got 1000000000"),
            (m(#""adapter": {"bottleneck": 0}"#), "adapter.bottleneck`: must be in 1...4096, got 0"),
            (m(#""adapter": {"layers": [0, 999]}"#), "adapter.layers`: must be in 0...128, got 999"),
            (m(#""adapter": {"layers": []}"#), "adapter.layers"),
            (m(#""adapter": {"gateMaskFraction": 0}"#), "adapter.gateMaskFraction`: must be in (0.0, 1.0]"),
            (m(#""lora": {"rank": 100000}"#), "lora.rank`: must be in 1...1024"),
            (m(#""training": {"batchSize": 1}"#), "methods[dual-replay].training.batchSize`: must be in 2...4096"),
            (m(#""training": {"epochs": 5000}"#), "training.epochs`: must be in 1...1000"),
            (m(#""heads": {"realignSteps": -1}"#), "heads.realignSteps`: must be in 0...100000"),
            (m(#""heads": {"realignSteps": 10000000}"#), "heads.realignSteps"),
            (m(#""router": {"rescore": {"topK": 0}}"#), "router.rescore.topK`: must be in 1...1000"),
            (m(#""router": {"rescore": {"threshold": 2}}"#), "router.rescore.threshold"),
            (m(#""router": {"layer": 500}"#), "router.layer"),
            (m(#""loss": {"anchor": -1}"#), "loss.anchor"),
            (m(#""replay": {"share": 1}"#), "replay.share`: must be in [0.0, 1.0)"),
            (Self.json(top: #""training": {"batchSize": 100000}"#), "field `training.batchSize`: must be in 2...4096, got 100000"),
            (Self.json(top: #""training": {"maxLength": 513}"#), "training.maxLength`: must be in 3...512"),
            (Self.json(top: #""training": {"bufferBytes": 0}"#), "training.bufferBytes"),
            (Self.json(top: #""training": {"bufferBytes": 100000000000000}"#), "training.bufferBytes"),
            (Self.json(top: #""training": {"bufferExamples": 0}"#), "training.bufferExamples"),
            (Self.json(top: #""training": {"routerTraining": {"epochs": 0}}"#), "training.routerTraining.epochs"),
            (Self.json(top: #""training": {"routerTraining": {"batchSize": 1000000}}"#), "training.routerTraining.batchSize"),
            (Self.json(top: #""training": {"routerTraining": {"newDomainExamples": 0}}"#), "training.routerTraining.newDomainExamples"),
            (Self.json(top: #""training": {"optimizer": {"beta2": 1}}"#), "training.optimizer.beta2"),
            (Self.json(data: #"{"synthetic": {"domains": 0}}"#), "data.synthetic.domains`: must be in 1...1000"),
            (Self.json(data: #"{"synthetic": {"domains": 4, "headDomains": 5}}"#), "data.synthetic.headDomains`: must be in 1...4"),
            (Self.json(data: #"{"synthetic": {"trainPerIntent": 10, "minTrainPerIntent": 11}}"#), "data.synthetic.minTrainPerIntent`: must be in 1...10"),
            (Self.json(data: #"{"synthetic": {"intentsPerDomain": 6, "intentsPerDomainMin": 0}}"#), "data.synthetic.intentsPerDomainMin`: must be in 1...6"),
            (Self.json(data: #"{"synthetic": {"domains": 100000}}"#), "data.synthetic.domains"),
            (Self.json(data: #"{"synthetic": {"intentsPerDomain": 0}}"#), "data.synthetic.intentsPerDomain"),
            (Self.json(data: #"{"synthetic": {"trainPerIntent": 0}}"#), "data.synthetic.trainPerIntent"),
            (Self.json(data: #"{"synthetic": {"testPerIntent": 1000000}}"#), "data.synthetic.testPerIntent"),
            (Self.json(data: #"{"synthetic": {"domains": 1000, "intentsPerDomain": 100, "trainPerIntent": 1000}}"#), "data.synthetic (domains"),
            (Self.json(data: #"{"synthetic": {}, "maxTrainPerDomain": 0}"#), "data.maxTrainPerDomain"),
            (Self.json(top: #""orderings": 0"#), "orderings`: must be in 1...1000"),
            (Self.json(top: #""threads": 0"#), "threads`: must be in 1...256"),
            (Self.json(top: #""threads": 100000"#), "threads"),
            (Self.json(top: #""latencySamples": -1"#), "latencySamples"),
            (Self.json(top: #""probeTrainPerDomain": 1"#), "probeTrainPerDomain`: must be in 2...1000000"),
        ]
        for (text, expected) in cases {
            let msg = try #require(try Self.loadError(text, file: "bounds.json"), "accepted: \(text)")
            #expect(msg.contains("bounds.json: field `") && msg.contains(expected), "\(msg)")
        }
    }

    // MARK: - Names

    @Test func namesMustBeOnePathComponent() throws {
        let bad = ["../../../tmp/x", "", ".", "..", "a/b", "a\\b", "a\u{0}b", "tab\there", "bell\u{7}", "del\u{7F}"]
        for name in bad {
            var cfg = ExperimentConfig(name: name, data: DataConfig(synthetic: SyntheticConfig()), methods: [MethodConfig(kind: .lora)])
            #expect(throws: ConfigError.self, "config name \(name.debugDescription)") { try cfg.validate() }
            #expect { try cfg.validate() } throws: { "\($0)".contains("field `name`") }
            cfg.name = "fine-name_1.v2"
            cfg.methods[0].name = name
            #expect { try cfg.validate() } throws: { "\($0)".contains(".name`") }
        }
        var ok = ExperimentConfig(name: "clinc150+distill", data: DataConfig(synthetic: SyntheticConfig()), methods: [MethodConfig(kind: .lora)])
        ok.methods[0].name = "dr+distill+realign50-lr1e-4"
        try ok.validate()
        let escaped = Self.json(method: #"{"kind": "lora", "name": "../up"}"#)
        #expect(try Self.loadError(escaped)?.contains("single path component") == true)
    }

    // MARK: - The defaults table

    static func resolved(_ kind: MethodKind, _ edit: (inout MethodConfig) -> Void = { _ in }) throws -> MethodSettings {
        var m = MethodConfig(kind: kind)
        edit(&m)
        return try MethodSettings.resolve(m, training: TrainingDefaults())
    }

    @Test func perKindDefaultsComeFromTheTable() throws {
        // logit replay: DER and dual-replay
        #expect(try Self.resolved(.der).loss.logitReplay == 0.5)
        #expect(try Self.resolved(.dualReplay).loss.logitReplay == 0.5)
        #expect(try Self.resolved(.loraReplay).loss.logitReplay == 0)
        // anchoring: dual-replay only
        #expect(try Self.resolved(.dualReplay).loss.anchor == 0.1)
        #expect(try Self.resolved(.der).loss.anchor == 0)
        // orthogonality: O-LoRA only
        #expect(try Self.resolved(.olora).loss.orthogonality == 0.1)
        #expect(try Self.resolved(.lora).loss.orthogonality == 0)
        // the router: on for dual-replay only
        #expect(try Self.resolved(.dualReplay).router)
        #expect(try !Self.resolved(.loraReplay).router)
        // prototypes fused wherever the router is on, off without it
        #expect(try Self.resolved(.dualReplay).spec.routerPrototypes == PrototypeRouting(mode: .fused, temperature: 0.02, weight: 2))
        #expect(try Self.resolved(.lora) { $0.router.enabled = true }.spec.routerPrototypes?.mode == .fused)
        #expect(try Self.resolved(.lora).spec.routerPrototypes == nil)
        #expect(try Self.resolved(.dualReplay) { $0.router.enabled = false }.spec.routerPrototypes == nil)
        // loss scope: domain with a router, seen without
        #expect(try !Self.resolved(.dualReplay).lossOverSeen)
        #expect(try Self.resolved(.dualReplay) { $0.router.enabled = false }.lossOverSeen)
        #expect(try !Self.resolved(.der) { $0.router.enabled = true }.lossOverSeen)
        #expect(try Self.resolved(.der).lossOverSeen)
        // replay share only for methods with a buffer
        #expect(try Self.resolved(.lora) { $0.replay.share = 0.4 }.replayShare == 0)
        #expect(try Self.resolved(.loraReplay).replayShare == ConfigDefaults.replayShare)
        // quota redistribution: off unless asked for, and then on the learner's buffer
        #expect(try Self.resolved(.dualReplay).redistributeQuotas == nil)
        #expect(try Self.resolved(.dualReplay) { $0.replay.redistribute = false }.redistributeQuotas == nil)
        #expect(try Self.resolved(.dualReplay) { $0.replay.redistribute = true }.redistributeQuotas == true)
        let parsed = try JSONDecoder().decode(MethodConfig.self, from: Data(#"{"kind": "dual-replay", "replay": {"redistribute": true}}"#.utf8))
        #expect(parsed.replay.redistribute == true)
        // reference architecture: the adapter unless told
        #expect(try Self.resolved(.joint).spec.adapter && Self.resolved(.single) { $0.architecture = .lora }.spec.lora)
    }

    @Test func formerlyOptionalSettingsResolveToTheirDefaults() throws {
        let s = try Self.resolved(.dualReplay) { $0.training.learningRate = 3e-4 }
        #expect(s.sharedLRScale == 1)
        #expect(s.realignHeadSteps == 0)
        #expect(s.realignLearningRate == 3e-4)
        #expect(s.routerRescoreTopK == 1)
        #expect(s.routerRescoreThreshold == 0.9)
        let t = try Self.resolved(.dualReplay) {
            $0.heads.realignLearningRate = 1e-4
            $0.router.rescore.threshold = 0.5
        }
        #expect(t.realignLearningRate == 1e-4 && t.routerRescoreThreshold == 0.5)
        // method blocks override the experiment's training block, which overrides the table
        var training = TrainingDefaults()
        training.epochs = 7
        var m = MethodConfig(kind: .der)
        #expect(try MethodSettings.resolve(m, training: training).epochs == 7)
        m.training.epochs = 2
        #expect(try MethodSettings.resolve(m, training: training).epochs == 2)
        #expect(TrainingDefaults().epochs == ConfigDefaults.epochs && TrainingDefaults().maxLength == ConfigDefaults.maxLength)
    }

    // MARK: - Memory

    static let model = BertConfig(layers: 6, hidden: 384, heads: 12, intermediate: 1536, vocabSize: 30522, maxPositions: 512)

    static func scenario() throws -> Scenario {
        try Scenario(domains: SyntheticCorpus.make(config: SyntheticConfig(domains: 3, intentsPerDomain: 4, trainPerIntent: 2,
                                                                           valPerIntent: 1, testPerIntent: 1)))
    }

    @Test func trainingMemoryEstimateCountsEveryParameterFourTimes() throws {
        let s = try Self.resolved(.dualReplay) { $0.adapter.bottleneck = 8; $0.adapter.layers = [0, 1] }
        let parts = s.estimatedTrainingBytes(hidden: 10, layers: 6, intents: 12, domains: 3)
        let adapter = try #require(parts.first { $0.field == "methods[dual-replay].adapter.bottleneck" })
        // per layer: down 8×10+8, up 10×8+10, gates 3×8
        #expect(adapter.bytes == 16 * 2 * (80 + 8 + 80 + 10 + 24))
        #expect(parts.first { $0.field == "data (intents)" }?.bytes == 16 * 12 * 11)
        let Hd = s.spec.routerHidden
        #expect(parts.first { $0.field == "methods[dual-replay].router" }?.bytes == 16 * (Hd * 10 + Hd + 3 * Hd + 3) + 16 * 12 * 10)
        let lora = try Self.resolved(.olora) { $0.lora.rank = 4 }.estimatedTrainingBytes(hidden: 10, layers: 6, intents: 12, domains: 3)
        #expect(lora.first { $0.field == "methods[olora].lora.rank" }?.bytes == 16 * 3 * 6 * 2 * 2 * 4 * 10)
    }

    @Test func runsThatCannotFitInMemoryAreRefusedBeforeTheyStart() throws {
        var cfg = ExperimentConfig(name: "mem", data: DataConfig(synthetic: SyntheticConfig()), methods: [MethodConfig(kind: .dualReplay)])
        cfg.methods[0].adapter.bottleneck = 4096
        let scenario = try Self.scenario()
        try ExperimentSetup.checkResources(cfg, model: Self.model, scenario: scenario)
        #expect {
            try ExperimentSetup.checkResources(cfg, model: Self.model, scenario: scenario, physicalMemory: 200_000_000)
        } throws: { "\($0)".contains("methods[dual-replay].adapter.bottleneck") && "\($0)".contains("more than this machine's 0.2 GB") }
        cfg.methods[0].adapter.bottleneck = 16
        try ExperimentSetup.checkResources(cfg, model: Self.model, scenario: scenario, physicalMemory: 200_000_000)
        // full fine-tuning trains the base: its weights dominate
        cfg.methods = [MethodConfig(kind: .fullFT)]
        #expect {
            try ExperimentSetup.checkResources(cfg, model: Self.model, scenario: scenario, physicalMemory: 200_000_000)
        } throws: { "\($0)".contains("methods[full-ft].kind") }
        // model-dependent bounds
        cfg.methods = [MethodConfig(kind: .dualReplay)]
        cfg.methods[0].adapter.layers = [6]
        #expect { try ExperimentSetup.checkResources(cfg, model: Self.model, scenario: scenario) } throws: {
            "\($0)".contains("adapter.layers") && "\($0)".contains("6 layers")
        }
        cfg.methods[0].adapter.layers = nil
        cfg.training = TrainingDefaults()
        cfg.training?.maxLength = 300
        let short = BertConfig(layers: 2, hidden: 8, heads: 2, intermediate: 16, vocabSize: 50, maxPositions: 128)
        #expect { try ExperimentSetup.checkResources(cfg, model: short, scenario: scenario) } throws: {
            "\($0)".contains("training.maxLength") && "\($0)".contains("128 positions")
        }
    }

    // MARK: - Round trips

    static func everyBlockSet() -> ExperimentConfig {
        var m = MethodConfig(kind: .dualReplay, name: "dr-v1")
        m.training.epochs = 2
        m.training.learningRate = 1e-3
        m.training.batchSize = 32
        m.adapter.bottleneck = 64
        m.adapter.layers = [0, 1]
        m.adapter.placement = .ffn
        m.adapter.activation = .relu
        m.adapter.gateInit = .mask
        m.adapter.gateMaskFraction = 0.5
        m.adapter.freezeOldGates = false
        m.adapter.protectOldChannels = 0.5
        m.adapter.sharedLearningRateScale = 0.1
        m.heads.freezeOld = true
        m.heads.realignSteps = 5
        m.heads.realignLearningRate = 1e-4
        m.router.enabled = true
        m.router.layer = 3
        m.router.balanced = false
        m.router.prototypes.mode = .only
        m.router.prototypes.temperature = 0.05
        m.router.prototypes.weight = 1
        m.router.rescore.topK = 2
        m.router.rescore.threshold = 0.8
        m.lora.rank = 4
        m.lora.alpha = 8
        m.loss.scope = .seen
        m.loss.logitReplay = 0.3
        m.loss.anchor = 0.2
        m.loss.orthogonality = 0.1
        m.replay.share = 0.3
        m.replay.domainFraction = 0.6
        m.replay.floorWeight = 0.1
        m.replay.samplingFloorWeight = 0.3
        m.replay.forgettingEMA = 0.4
        var file = DataFileConfig(path: "a.jsonl", domainPrefix: "p", domains: ["x"])
        file.multiLabel = .separate
        file.unknownLabels = .drop
        file.allowSharedLabels = true
        file.excludeDomains = ["oos"]
        var cfg = ExperimentConfig(name: "round-trip", model: "models/m", data: DataConfig(files: [file], maxTrainPerDomain: 10),
                                   methods: [m, MethodConfig(kind: .lora)])
        cfg.data.multiIntentFiles = [file]
        cfg.references = [MethodConfig(kind: .joint)]
        cfg.references?[0].architecture = .lora
        cfg.schemaVersion = ExperimentConfig.schemaVersion
        cfg.evalSplit = .val
        cfg.orderingSeeds = [3, 4]
        cfg.training = TrainingDefaults()
        cfg.training?.optimizer.decay = .cosine
        cfg.training?.routerTraining.balanced = false
        cfg.training?.bufferBytes = 5000
        cfg.latencySamples = 0
        cfg.diagnostics = true
        cfg.probeTrainPerDomain = 50
        return cfg
    }

    @Test func encodedConfigsDecodeStrictlyAgain() throws {
        let cfg = Self.everyBlockSet()
        try cfg.validate()
        let data = try JSONEncoder().encode(cfg)
        #expect(try JSONDecoder().decode(ExperimentConfig.self, from: data) == cfg)
        // through the file loader too (strict JSON, then validation)
        let dir = try TestPaths.tempDir()
        defer { try? FileManager.default.removeItem(at: dir) }
        let url = dir.appendingPathComponent("encoded.json")
        try data.write(to: url)
        #expect(try ExperimentConfig.load(url) == cfg)
        // an empty method block is left out of the encoding
        let plain = String(decoding: try JSONEncoder().encode(MethodConfig(kind: .lora)), as: UTF8.self)
        #expect(plain == #"{"kind":"lora"}"#)
    }

    /// The state manifest carries the config and the resolved settings; what it writes, the
    /// strict decoder reads back unchanged.
    @Test func stateManifestRoundTrips() throws {
        let cfg = Self.everyBlockSet()
        let settings = try MethodSettings.resolve(cfg.methods[0], training: cfg.training!)
        let manifest = StateManifest(version: 1, createdAt: "2024-01-01T00:00:00Z", codeVersion: "test",
                                     baseModel: BaseModelInfo(fingerprint: "0", layers: 6, hidden: 384, vocabSize: 30522, path: nil),
                                     config: cfg, settings: settings, seed: 4, byteBudget: 5000, domains: [], modelOptimizerStep: 0,
                                     trainingRNG: 1, modelRNG: 2, bestValidationF1: [], tensors: [], files: [])
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .prettyPrinted]
        let back = try JSONDecoder().decode(StateManifest.self, from: try encoder.encode(manifest))
        #expect(back == manifest)
        #expect(back.settings.realignLearningRate == 1e-4 && back.settings.routerRescoreTopK == 2)
    }
}
