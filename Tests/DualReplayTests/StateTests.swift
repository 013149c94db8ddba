import Foundation
import Testing
@testable import DualReplay
#if canImport(Glibc)
import Glibc
#endif

/// Production state: save/load round trips bit for bit, onboarding equals the sequential run, and
/// hostile inputs (corrupted, truncated, oversized files, wrong schema or base model, bad domain
/// files, a full disk during a save) fail with errors naming the file while the saved state stays
/// valid. A tiny random encoder keeps the suite fast.
@Suite struct StateTests {
    static let words = (0..<40).map { "w\($0)" }

    static func encoder(seed: UInt64 = 11) throws -> SentenceEncoder {
        let vocab = ["[PAD]", "[CLS]", "[SEP]", "[UNK]"] + words
        let cfg = BertConfig(layers: 2, hidden: 16, heads: 2, intermediate: 32, vocabSize: vocab.count, maxPositions: 24,
                             typeVocabSize: 2, layerNormEps: 1e-12, hiddenAct: "gelu")
        return SentenceEncoder(weights: BertWeights(config: cfg, seed: seed), tokenizer: try BertTokenizer(vocab: vocab, maxLength: 16))
    }

    /// A domain whose intents each own two keywords among a few shared filler words.
    static func domain(_ name: String, base: Int, intents: Int = 3, train: Int = 8, val: Int = 2, test: Int = 3) -> DomainData {
        var rng = SplitMix64(seed: FNV1a.of(name))
        func rows(_ split: Split, _ n: Int) -> [IntentExample] {
            var out: [IntentExample] = []
            for i in 0..<intents {
                for _ in 0..<n {
                    let key = words[base + 2 * i + Int(rng.next() % 2)]
                    let fill = (0..<3).map { _ in words[30 + Int(rng.next() % 10)] }
                    out.append(IntentExample(text: ([key] + fill).joined(separator: " "), intent: "\(name)_\(i)", domain: name, split: split))
                }
            }
            return out
        }
        return DomainData(name: name, intents: (0..<intents).map { "\(name)_\($0)" }, train: rows(.train, train), val: rows(.val, val),
                          test: rows(.test, test))
    }

    static func config() -> ExperimentConfig {
        var m = MethodConfig(kind: .dualReplay)
        m.adapter.bottleneck = 4
        m.loss.logitReplay = 0.3
        var cfg = ExperimentConfig(name: "state-test", data: DataConfig(), methods: [m])
        var t = TrainingDefaults()
        t.epochs = 2
        t.batchSize = 8
        t.learningRate = 5e-3
        t.bufferBytes = 2400
        t.maxLength = 16
        t.routerTraining.epochs = 3
        cfg.training = t
        cfg.seed = 4
        cfg.latencySamples = 0
        return cfg
    }

    static let general: [String] = (0..<30).map { (i: Int) -> String in
        let picks: [String] = (0..<4).map { (j: Int) -> String in words[30 + (i * 7 + j * 3) % 10] }
        return picks.joined(separator: " ")
    }

    /// A state with domains a and b saved in a fresh directory.
    static func savedState() throws -> (dir: URL, state: ContinualState) {
        let dir = try TestPaths.tempDir().appendingPathComponent("state")
        let s = try ContinualState.create(config: config(), encoder: try encoder(), generalTexts: general, modelPath: nil)
        _ = try s.onboard(domain("a", base: 0))
        try s.save(to: dir)
        _ = try s.onboard(domain("b", base: 6))
        try s.save(to: dir)
        return (dir, s)
    }

    static func files(_ dir: URL) throws -> [String: Data] {
        let vdir = try StateDirectory.currentVersion(dir)
        var out: [String: Data] = [:]
        let e = FileManager.default.enumerator(atPath: vdir.path)!
        while let p = e.nextObject() as? String {
            let u = vdir.appendingPathComponent(p)
            var isDir: ObjCBool = false
            if FileManager.default.fileExists(atPath: u.path, isDirectory: &isDir), !isDir.boolValue { out[p] = try Data(contentsOf: u) }
        }
        return out
    }

    static func bits(_ x: [Float]) -> [UInt32] { x.map(\.bitPattern) }

    static func expectLoadFails(_ dir: URL, naming file: String, _ contains: String? = nil, sourceLocation: SourceLocation = #_sourceLocation) {
        do {
            _ = try StateDirectory.load(dir)
            Issue.record("a damaged \(file) was accepted", sourceLocation: sourceLocation)
        } catch {
            let msg = error.localizedDescription
            #expect(msg.contains(file), "\(msg)", sourceLocation: sourceLocation)
            if let contains { #expect(msg.contains(contains), "\(msg)", sourceLocation: sourceLocation) }
        }
    }

    // MARK: - round trip

    @Test func saveThenLoadGivesBitIdenticalModel() throws {
        let (dir, s) = try Self.savedState()
        defer { try? FileManager.default.removeItem(at: dir.deletingLastPathComponent()) }
        let r = try ContinualState.open(dir, encoder: try Self.encoder())
        #expect(r.manifest.version == 2 && r.manifest.domains.map(\.name) == ["a", "b"])
        #expect(Self.bits(Array(r.model.store.values.buffer)) == Self.bits(Array(s.model.store.values.buffer)))
        #expect(Self.bits(Array(r.model.store.moment1.buffer)) == Self.bits(Array(s.model.store.moment1.buffer)))
        #expect(Self.bits(Array(r.model.store.moment2.buffer)) == Self.bits(Array(s.model.store.moment2.buffer)))
        #expect(r.model.store.tensors == s.model.store.tensors)
        #expect(r.model.optimizerStep == s.model.optimizerStep && r.model.optimizerStep > 0)
        #expect(r.router?.step == s.router?.step && (r.router?.step ?? 0) > 0)
        #expect(r.learner.rng.state == s.learner.rng.state && r.model.rngState.state == s.model.rngState.state)
        #expect(r.learner.dual?.state == s.learner.dual?.state)
        #expect(r.learner.bestValidationF1 == s.learner.bestValidationF1)
        // the router features of every buffered example come back bit for bit, and nothing else
        let buffered = Set(s.learner.bufferedItems(before: 2).filter { !$0.isGeneral }.map {
            DomainRouter.FeatureKey(domain: $0.domain, ids: $0.tokenIds) })
        #expect(!buffered.isEmpty && Set(r.router!.trainingFeatures.keys) == buffered)
        for k in buffered { #expect(Self.bits(r.router!.trainingFeatures[k]!) == Self.bits(s.router!.trainingFeatures[k]!)) }
        let seqs: [[Int32]] = [[1, 5, 33, 2], [1, 12, 30, 31, 2], [1, 7, 2]]
        for g in [Int32(0), 1] {
            let gates = [Int32](repeating: g, count: seqs.count)
            #expect(Self.bits(r.model.logits(seqs, gateIds: gates)) == Self.bits(s.model.logits(seqs, gateIds: gates)))
        }
        let texts = ["w0 w31 w32", "w8 w30", "w39"]
        #expect(r.predict(texts) == s.predict(texts))
        #expect(r.metrics == s.metrics && r.metrics.count == 2)
        // the previous version is still on disk; `current` points at the newest
        #expect(FileManager.default.fileExists(atPath: dir.appendingPathComponent("versions/000001/state.json").path))
        #expect(try StateDirectory.currentVersion(dir).lastPathComponent == "000002")
    }

    /// create + onboard a, save, load, onboard b == the experiment's sequential run over [a, b]: the state carries
    /// everything the training loop carries (bit-identical F1 matrices and ledger).
    @Test func onboardingAcrossSavesEqualsRunSequential() throws {
        let enc = try Self.encoder()
        let cfg = Self.config()
        // three domains: from the third on, the router's feature cache of an uninterrupted run
        // holds features computed while training earlier domains; a reopened state starts empty
        let domains = [Self.domain("a", base: 0), Self.domain("b", base: 6), Self.domain("c", base: 12)]
        let runner = ExperimentRunner(config: cfg, scenario: try Scenario(domains: domains), encoder: enc,
                                      generalTexts: Self.general, codeVersion: "test")
        let settings = try MethodSettings.resolve(cfg.methods[0], training: cfg.training!)
        let reference = try runner.methodRun(settings, order: runner.scenario, seed: cfg.seed!).sequential()

        let dir = try TestPaths.tempDir().appendingPathComponent("state")
        defer { try? FileManager.default.removeItem(at: dir.deletingLastPathComponent()) }
        let s = try ContinualState.create(config: cfg, encoder: enc, generalTexts: Self.general, modelPath: nil)
        _ = try s.onboard(domains[0])
        try s.save(to: dir)
        var r = try ContinualState.open(dir, encoder: try Self.encoder())
        for d in domains.dropFirst() {
            _ = try r.onboard(d)
            try r.save(to: dir)
            r = try ContinualState.open(dir, encoder: try Self.encoder())
        }
        for i in 0..<3 {
            #expect(r.metrics[i].routedF1 == Array(reference.routed.f1[i][0...i]), "row \(i)")
            #expect(r.metrics[i].oracleF1 == Array(reference.oracle.f1[i][0...i]), "row \(i)")
            #expect(r.metrics[i].validationF1 == reference.validationF1[i])
        }
        #expect(r.metrics.last?.routerAccuracy == reference.routerAccuracy?.last)
        #expect(r.learner.dual?.ledger == reference.ledger)
    }

    // MARK: - damaged files

    @Test func damagedFilesAreRejectedNamingTheFile() throws {
        let (dir, _) = try Self.savedState()
        defer { try? FileManager.default.removeItem(at: dir.deletingLastPathComponent()) }
        let vdir = try StateDirectory.currentVersion(dir)
        let original = try Self.files(dir)
        func damage(_ name: String, _ change: (inout Data) -> Void) throws {
            var d = original[name]!
            change(&d)
            try d.write(to: vdir.appendingPathComponent(name))
        }
        func restore(_ name: String) throws { try original[name]!.write(to: vdir.appendingPathComponent(name)) }

        for name in ["params.safetensors", "buffer.json", "metrics.json", "domains/0.jsonl", RouterFeatureFile.name] {
            try damage(name) { $0 = $0.prefix($0.count / 2) }                        // truncated
            Self.expectLoadFails(dir, naming: name, "bytes")
            try damage(name) { $0[$0.count / 3] ^= 0x10 }                            // one bit flipped
            Self.expectLoadFails(dir, naming: name, "checksum")
            try damage(name) { $0.append(Data(repeating: 0x20, count: 4096)) }      // oversized
            Self.expectLoadFails(dir, naming: name, "bytes")
            try FileManager.default.removeItem(at: vdir.appendingPathComponent(name)) // missing
            Self.expectLoadFails(dir, naming: name, "missing")
            try restore(name)
        }
        // the manifest protects itself: a flipped digit in a value is caught by its checksum
        try damage("state.json") { d in
            let r = d.range(of: Data("\"classOffset\" : 3".utf8))!
            d[r.upperBound - 1] = UInt8(ascii: "4")
        }
        Self.expectLoadFails(dir, naming: "state.json", "checksum")
        try damage("state.json") { $0 = $0.prefix(100) }
        Self.expectLoadFails(dir, naming: "state.json")
        try restore("state.json")
        // a state file far above the reading limit is refused before it is read
        let big = vdir.appendingPathComponent("state.json")
        #expect(truncate(big.path, off_t(StateDirectory.maxManifestBytes + 1)) == 0)
        Self.expectLoadFails(dir, naming: "state.json", "limit")
        try restore("state.json")
        // nothing was changed by any failed load: the state loads and is the saved one
        _ = try StateDirectory.load(dir)
        #expect(try Self.files(dir) == original)
    }

    @Test func wrongSchemaVersionIsReported() throws {
        let (dir, _) = try Self.savedState()
        defer { try? FileManager.default.removeItem(at: dir.deletingLastPathComponent()) }
        let url = try StateDirectory.currentVersion(dir).appendingPathComponent("state.json")
        let text = try String(contentsOf: url, encoding: .utf8).replacingOccurrences(of: "\"schemaVersion\" : 1", with: "\"schemaVersion\" : 2")
        try Data(text.utf8).write(to: url)
        Self.expectLoadFails(dir, naming: "state.json", "schema version 2")
    }

    @Test func stateOfAnotherBaseModelIsRefused() throws {
        let (dir, _) = try Self.savedState()
        defer { try? FileManager.default.removeItem(at: dir.deletingLastPathComponent()) }
        do {
            _ = try ContinualState.open(dir, encoder: try Self.encoder(seed: 12))
            Issue.record("a different base model was accepted")
        } catch let e as StateError {
            guard case .baseModelMismatch = e else { Issue.record("unexpected \(e)"); return }
            #expect(e.localizedDescription.contains("state.json"))
        }
    }

    @Test func tensorShapesMustMatchTheSpec() throws {
        let (dir, s) = try Self.savedState()
        defer { try? FileManager.default.removeItem(at: dir.deletingLastPathComponent()) }
        // a consistent state (valid checksums) whose spec disagrees with its tensors
        var snap = s.snapshot()
        snap.manifest.settings.spec.bottleneck = 5
        try StateDirectory.save(snap, to: dir)
        do {
            _ = try ContinualState.open(dir, encoder: try Self.encoder())
            Issue.record("a layout that the spec does not build was accepted")
        } catch {
            #expect(error.localizedDescription.contains("state.json") && error.localizedDescription.contains("adapter.0"), "\(error.localizedDescription)")
        }
    }

    // MARK: - bad domain files

    @Test func badDomainInputsAreErrors() throws {
        let (dir, _) = try Self.savedState()
        defer { try? FileManager.default.removeItem(at: dir.deletingLastPathComponent()) }
        let s = try ContinualState.open(dir, encoder: try Self.encoder())
        // a domain the state already has
        #expect(throws: StateError.domainExists(name: "a", file: "a.jsonl")) { try s.onboard(Self.domain("a", base: 12), source: "a.jsonl") }
        let files = dir.deletingLastPathComponent()
        func write(_ lines: [String], _ name: String) throws -> URL {
            let u = files.appendingPathComponent(name)
            try Data(lines.joined(separator: "\n").utf8).write(to: u)
            return u
        }
        func row(_ text: String, _ intent: String, _ domain: String, _ split: String) -> String {
            #"{"text":"\#(text)","intent":"\#(intent)","domain":"\#(domain)","split":"\#(split)"}"#
        }
        let empty = try write([], "empty.jsonl")
        #expect(throws: DataError.emptyFile(file: empty.path)) { try ContinualState.loadDomain(empty) }
        let unknown = try write([row("w1", "x", "c", "train"), row("w2", "x", "c", "val"), row("w3", "y", "c", "test")], "unknown.jsonl")
        #expect(throws: DataError.unknownLabel(file: unknown.path, line: 3, label: "y", domain: "c", split: .test)) {
            try ContinualState.loadDomain(unknown)
        }
        let two = try write([row("w1", "x", "c", "train"), row("w2", "x", "c", "val"), row("w3", "x", "c", "test"),
                             row("w1", "z", "d", "train"), row("w2", "z", "d", "val"), row("w3", "z", "d", "test")], "two.jsonl")
        #expect(throws: OnboardError.notOneDomain(file: two.path, found: ["c", "d"])) { try ContinualState.loadDomain(two) }
        var bytes = Data(row("w1", "x", "c", "train").utf8)
        bytes.append(contentsOf: [0x0A, 0xFF, 0xFE, 0x0A])
        let binary = files.appendingPathComponent("binary.jsonl")
        try bytes.write(to: binary)
        #expect(throws: DataError.invalidUTF8(file: binary.path, line: 2)) { try ContinualState.loadDomain(binary) }
        // none of this touched the saved state
        #expect(try StateDirectory.load(dir).manifest.version == 2)
    }

    // MARK: - crash safety

    @Test func fullDiskDuringSaveKeepsThePreviousState() throws {
        let (dir, s) = try Self.savedState()
        defer { try? FileManager.default.removeItem(at: dir.deletingLastPathComponent()) }
        let before = try Self.files(dir)
        _ = try s.onboard(Self.domain("c", base: 12))
        let root = dir.path
        for fault in ["write", "fsync", "rename"] {
            // only this test's directory fails: other tests save concurrently
            AtomicFile.faultInjection = { step in
                step.hasPrefix(fault + " ") && step.contains(root) && (fault != "write" || step.hasSuffix("params.safetensors")) ? ENOSPC : nil
            }
            defer { AtomicFile.faultInjection = nil }
            #expect(throws: (any Error).self) { try s.save(to: dir) }
            AtomicFile.faultInjection = nil
            #expect(try Self.files(dir) == before, "after a failed \(fault)")
            #expect(try StateDirectory.currentVersion(dir).lastPathComponent == "000002")
            let leftovers = try FileManager.default.contentsOfDirectory(atPath: dir.appendingPathComponent("versions").path)
            #expect(leftovers.sorted() == ["000001", "000002"], "after a failed \(fault): \(leftovers)")
        }
        // with the disk back, the save goes through
        #expect(try s.save(to: dir) == 3)
        #expect(try StateDirectory.load(dir).manifest.domains.count == 3)
    }

    // MARK: - export

    /// With the router below the first adapter layer, prediction continues the gated pass from the
    /// routing pass's layers: same predictions as a full pass with the routed gates.
    @Test func predictionReusesTheRoutingPass() throws {
        var cfg = Self.config()
        cfg.methods[0].adapter.layers = [1]
        cfg.methods[0].router.layer = 1
        let s = try ContinualState.create(config: cfg, encoder: try Self.encoder(), generalTexts: Self.general, modelPath: nil)
        _ = try s.onboard(Self.domain("a", base: 0))
        _ = try s.onboard(Self.domain("b", base: 6))
        #expect(s.model.resumeLayer == 1)
        let texts = ["w0 w31 w32", "w8 w30", "w39", "w7 w33 w34 w35"]
        let preds = s.predict(texts)
        let seqs = texts.map { s.encoder.tokenizer.encode($0) }
        let full = s.model.logits(seqs, gateIds: preds.map { Int32($0.gate) })
        let V = s.model.classCount
        for (b, p) in preds.enumerated() {
            let d = s.model.domains[p.gate]
            let best = d.classRange.max { full[b * V + $0] < full[b * V + $1] }!
            #expect(p.intent == d.intents[best - d.classOffset] && p.domain == d.name)
        }
    }

    /// Head rescoring picks, among the candidates, the domain maximising log p_router + log max
    /// softmax of its head (checked by brute force over every gate); threshold 0 = plain routing.
    @Test func routerHeadRescoringPicksTheBestScoringDomain() throws {
        let s = try ContinualState.create(config: Self.config(), encoder: try Self.encoder(), generalTexts: Self.general, modelPath: nil)
        for (n, b) in [("a", 0), ("b", 6), ("c", 12)] { _ = try s.onboard(Self.domain(n, base: b)) }
        let router = try #require(s.router)
        let m = s.model, K = m.domains.count, V = m.classCount
        let texts = ["w0 w31 w32", "w8 w30", "w39", "w7 w33 w34 w35", "w13 w2", "w16 w17 w30", "w31 w32 w33"]
        let seqs = texts.map { s.encoder.tokenizer.encode($0) }
        let plain = RoutedPredictor(model: m, router: router).predictChunk(seqs, features: .cached).domains
        let never = RoutedPredictor(model: m, router: router, rescoreTopK: K, rescoreThreshold: 0)
        #expect(never.predictChunk(seqs, features: .cached).domains == plain)
        let always = RoutedPredictor(model: m, router: router, rescoreTopK: K, rescoreThreshold: 1).predictChunk(seqs, features: .cached)
        let (chosen, logits) = (always.domains, always.logits)
        let p = router.probabilities(router.features(seqs).flatMap { $0 }, count: seqs.count)
        for (b, seq) in seqs.enumerated() {
            var scores: [Float] = []
            for d in 0..<K {
                let lg = m.logits([seq], gateIds: [Int32(d)])
                let r = m.domains[d].classRange
                let top = r.map { lg[$0] }.max()!
                scores.append(logf(p[b * K + d]) - logf(r.reduce(0) { $0 + expf(lg[$1] - top) }))
            }
            let best = (0..<K).max { scores[$0] < scores[$1] }!
            #expect(Int(chosen[b]) == best, "row \(b): scores \(scores)")
            let own = m.logits([seq], gateIds: [Int32(chosen[b])])
            // the chosen domain's logits (batch shapes differ: equal up to rounding)
            #expect(zip(logits[(b * V)..<((b + 1) * V)], own).allSatisfy { abs($0 - $1) < 1e-5 })
        }
        // prediction follows the same rule when the method asks for it: a state whose settings
        // rescore every route over all K domains predicts exactly `chosen`
        #expect(s.predict(texts).map(\.gate) == plain)
        var cfg = Self.config()
        cfg.methods[0].router.rescore.topK = K
        cfg.methods[0].router.rescore.threshold = 1
        let rescoring = try ContinualState.create(config: cfg, encoder: try Self.encoder(), generalTexts: Self.general, modelPath: nil)
        for (n, b) in [("a", 0), ("b", 6), ("c", 12)] { _ = try rescoring.onboard(Self.domain(n, base: b)) }
        let always3 = RoutedPredictor(model: rescoring.model, router: rescoring.router, rescoreTopK: K, rescoreThreshold: 1)
        #expect(rescoring.predict(texts).map(\.gate) == always3.predictChunk(seqs, features: .live).domains)
    }

    @Test func exportWritesDocumentedNamesAndShapes() throws {
        let (dir, s) = try Self.savedState()
        defer { try? FileManager.default.removeItem(at: dir.deletingLastPathComponent()) }
        let out = dir.deletingLastPathComponent().appendingPathComponent("export.safetensors")
        let cfg = try s.export(to: out)
        let file = try SafeTensorsFile(url: out)
        #expect(Set(file.tensors.keys) == Set(cfg.tensors.keys))
        for (name, shape) in cfg.tensors { #expect(try file.info(name).shape == shape) }
        #expect(cfg.tensors["adapter.0.gates"] == [2, 4] && cfg.tensors["head.w"] == [6, 16] && cfg.tensors["head.b"] == [6] && cfg.tensors["router.w2"] == [2, 256])
        #expect(Self.bits(try file.floats("adapter.1.up.w")) == Self.bits(s.model.store.array("adapter.1.up.w")))
        let json = try JSONDecoder().decode(ExportConfig.self, from: Data(contentsOf: out.deletingPathExtension().appendingPathExtension("json")))
        #expect(json == cfg && json.domains.map(\.name) == ["a", "b"] && json.adapterLayers == [0, 1])
    }
}
