import Foundation
import Testing
@testable import DualReplay
#if canImport(Glibc)
import Glibc
#endif

/// The alignment-drift remedy (`GateRefit`, `ContinualState.remediate`): it changes only the
/// flagged domain's gate row and head, keeps a candidate only when validation F1 improves, a dry
/// run writes nothing, and a save of the result is atomic and can be redone bit for bit. Alignment
/// drift is made by hand: permuting a domain's head rows misaligns the head while its features
/// (what a probe reads) stay as they were. The tiny random encoder of `StateTests` keeps it fast.
@Suite struct RemedyTests {
    /// Cyclically permutes domain `j`'s head rows (intent i gets intent i+1's weights and bias).
    static func misalign(_ m: ContinualModel, domain j: Int) {
        let d = m.domains[j], C = m.config.hidden, n = d.intents.count
        m.store.withValues(TensorName.headWeight) { w in
            let old = Array(w[(d.classOffset * C)..<((d.classOffset + n) * C)])
            for i in 0..<n { for c in 0..<C { w[(d.classOffset + i) * C + c] = old[((i + 1) % n) * C + c] } }
        }
        m.store.withValues(TensorName.headBias) { b in
            let old = Array(b[d.classOffset..<(d.classOffset + n)])
            for i in 0..<n { b[d.classOffset + i] = old[(i + 1) % n] }
        }
    }

    /// `StateTests.savedState` trained long enough for its heads to fit (domains a and b).
    static func savedState() throws -> (dir: URL, state: ContinualState) {
        let dir = try TestPaths.tempDir().appendingPathComponent("state")
        var cfg = StateTests.config()
        cfg.training?.epochs = 12
        cfg.training?.learningRate = 1e-2
        let s = try ContinualState.create(config: cfg, encoder: try StateTests.encoder(), generalTexts: StateTests.general, modelPath: nil)
        _ = try s.onboard(StateTests.domain("a", base: 0))
        try s.save(to: dir)
        _ = try s.onboard(StateTests.domain("b", base: 6))
        try s.save(to: dir)
        return (dir, s)
    }

    static func trainer(_ s: ContinualState) -> DomainTrainer {
        DomainTrainer(settings: s.settings, training: s.training, encoder: s.encoder,
                      tokens: TokenCache(tokenizer: s.encoder.tokenizer, maxLength: s.training.maxLength))
    }

    /// Flat indices of store values that gate row `j` (every adapter slot) and head `j` cover.
    static func allowed(_ m: ContinualModel, domain j: Int) -> Set<Int> {
        var out = Set<Int>()
        let R = m.spec.bottleneck, C = m.config.hidden, d = m.domains[j]
        for slot in m.adapterLayers.indices {
            let t = m.store.tensor(TensorName.gates(slot))
            out.formUnion((t.offset + j * R)..<(t.offset + (j + 1) * R))
        }
        let w = m.store.tensor(TensorName.headWeight), b = m.store.tensor(TensorName.headBias)
        out.formUnion((w.offset + d.classOffset * C)..<(w.offset + (d.classOffset + d.intents.count) * C))
        out.formUnion((b.offset + d.classOffset)..<(b.offset + d.classOffset + d.intents.count))
        return out
    }

    struct StoreCopy: Equatable {
        var values: [UInt32], moment1: [UInt32], moment2: [UInt32]
        var tensors: [ParameterStore.Tensor]
        var optimizerStep: Int
        init(_ m: ContinualModel) {
            let (v, m1, m2) = m.store.withArrays { ($0, $1, $2) }
            values = StateTests.bits(v); moment1 = StateTests.bits(m1); moment2 = StateTests.bits(m2)
            tensors = m.store.tensors
            optimizerStep = m.optimizerStep
        }
    }

    @Test func refitChangesOnlyTheDomainsGateRowAndHead() throws {
        let (dir, s) = try Self.savedState()
        defer { try? FileManager.default.removeItem(at: dir.deletingLastPathComponent()) }
        let m = s.model, tr = Self.trainer(s)
        let val = s.domainExamples[0].filter { $0.split == .val }
        let items = s.learner.bufferedItems(of: 0)
        #expect(items.count >= 2)
        // a candidate that cannot beat the trained head (one tiny step from a fresh start) is
        // rejected, and the model is bit-identical afterwards
        let trained = StoreCopy(m)
        let weak = try tr.refitGate(m, domain: 0, items: items, validation: val,
                                    config: GateRefit.Config(steps: 1, learningRate: 1e-9, batchSize: 8, seed: 1))
        #expect(!weak.kept && weak.candidate <= weak.before, "before \(weak.before) candidate \(weak.candidate)")
        #expect(StoreCopy(m) == trained)
        // a misaligned head is beaten: only gate row 0 and head 0 change; moments, which tensors
        // train and the optimizer's step counter stay as they were
        Self.misalign(m, domain: 0)
        let drifted = StoreCopy(m)
        let r = try tr.refitGate(m, domain: 0, items: items, validation: val,
                                 config: GateRefit.Config(steps: 60, learningRate: 0.01, batchSize: 8, seed: 1))
        #expect(r.kept && r.candidate > r.before, "before \(r.before) candidate \(r.candidate)")
        let after = StoreCopy(m)
        let ok = Self.allowed(m, domain: 0)
        let changed = Set(after.values.indices.filter { after.values[$0] != drifted.values[$0] })
        #expect(!changed.isEmpty && changed.isSubset(of: ok), "\(changed.subtracting(ok).count) values outside gate row 0 and head 0 changed")
        #expect(after.moment1 == drifted.moment1 && after.moment2 == drifted.moment2)
        #expect(after.tensors == drifted.tensors && after.optimizerStep == drifted.optimizerStep)
        // the kept candidate is what validation scored
        let oracle = Evaluator(predictor: RoutedPredictor(model: m, router: nil), tokens: tr.tokens)
        #expect(try oracle.oracleF1(domain: 0, examples: val) == r.candidate)
    }

    /// Every file under `dir` (versions, current, lock, ...), by relative path.
    static func tree(_ dir: URL) throws -> [String: Data] {
        var out: [String: Data] = [:]
        let e = FileManager.default.enumerator(atPath: dir.path)!
        while let p = e.nextObject() as? String {
            let u = dir.appendingPathComponent(p)
            var isDir: ObjCBool = false
            if FileManager.default.fileExists(atPath: u.path, isDirectory: &isDir) {
                out[p] = isDir.boolValue ? Data() : (try? Data(contentsOf: u)) ?? Data("(link)".utf8)
            }
        }
        return out
    }

    @Test func remediateDryRunWritesNothingAndApplyIsAtomicAndRedoable() throws {
        let (dir, s) = try Self.savedState()
        defer { try? FileManager.default.removeItem(at: dir.deletingLastPathComponent()) }
        Self.misalign(s.model, domain: 0)
        #expect(try s.save(to: dir) == 3)
        let enc = try StateTests.encoder()
        let before = try Self.tree(dir)
        // dry run: the report flags domain a and would keep its refit; not a byte is written
        let dry = try ContinualState.open(dir, encoder: enc)
        let report = try dry.remediate(steps: 60)
        let a = report.entries[0], b = report.entries[1]
        #expect(a.diagnosis?.kind == .alignmentDrift, "domain a: \(String(describing: a.diagnosis)) best \(dry.learner.bestValidationF1)")
        #expect(a.refit?.kept == true && report.changed == ["a"])
        #expect(b.diagnosis?.kind == .stable && b.refit == nil)
        #expect(a.routedF1After > a.routedF1Before && b.routedF1After == b.routedF1Before)
        #expect(try Self.tree(dir) == before)
        // a save that fails at its rename leaves the directory as it was
        let root = dir.path
        let failing = try ContinualState.open(dir, encoder: enc)
        _ = try failing.remediate(steps: 60)
        AtomicFile.faultInjection = { step in step.hasPrefix("rename ") && step.contains(root) ? EIO : nil }
        #expect(throws: (any Error).self) { try failing.save(to: dir) }
        AtomicFile.faultInjection = nil
        #expect(try Self.tree(dir) == before)
        // running it again goes through, with the same bits as the dry run computed
        let applied = try ContinualState.open(dir, encoder: enc)
        let again = try applied.remediate(steps: 60)
        #expect(again == report)
        #expect(try applied.save(to: dir) == 4)
        let v4 = try ContinualState.open(dir, encoder: enc), v3 = try StateDirectory.load(dir, version: 3)
        #expect(StoreCopy(v4.model).values == StoreCopy(dry.model).values)
        let changed = Set(v4.model.store.withArrays { v, _, _ in v.indices.filter { v[$0].bitPattern != v3.values[$0].bitPattern } })
        #expect(!changed.isEmpty && changed.isSubset(of: Self.allowed(v4.model, domain: 0)))
        #expect(v4.model.store.withArrays { _, m1, m2 in m1 == v3.moment1 && m2 == v3.moment2 })
        // the buffer: domain a's stored logits are the new head's (distillation targets), nothing
        // else in it changed (items, other domains, bytes)
        let bufBefore = try ContinualState.restore(v3, encoder: enc).learner.dual!, bufAfter = v4.learner.dual!
        #expect(bufAfter.items(of: 1) == bufBefore.items(of: 1) && bufAfter.bytesUsed == bufBefore.bytesUsed)
        #expect(bufAfter.generalItems == bufBefore.generalItems)
        let aBefore = bufBefore.items(of: 0), aAfter = bufAfter.items(of: 0)
        #expect(aAfter.map(\.tokenIds) == aBefore.map(\.tokenIds) && aAfter.map(\.label) == aBefore.map(\.label))
        #expect(aAfter.allSatisfy { $0.logits != nil } && aAfter.map(\.logits) != aBefore.map(\.logits))
        #expect(aAfter.map { $0.logits! } == (try v4.model.domainLogits(aAfter.map(\.tokenIds), domain: 0)))
        // the last metrics row is the re-evaluated one, marked; earlier rows are untouched
        #expect(v4.metrics.count == 2 && v4.metrics[1].remediated == ["a"] && v4.metrics[1].routedF1[0] == a.routedF1After)
        #expect(v4.metrics[0] == v3.metrics[0])
        #expect(v4.learner.bestValidationF1[0] >= v3.manifest.bestValidationF1[0])
        // version 3 is kept and still loads
        #expect(v3.manifest.version == 3)
    }

    @Test func driftRefitConfigIsStrictAndBounded() throws {
        let json = #"{"kind": "dual-replay", "heads": {"driftRefitSteps": 50, "driftRefitLearningRate": 0.01}}"#
        let m = try JSONDecoder().decode(MethodConfig.self, from: Data(json.utf8))
        let s = try MethodSettings.resolve(m, training: TrainingDefaults())
        #expect(s.driftRefitSteps == 50 && s.driftRefitLearningRate == 0.01)
        #expect(try MethodSettings.resolve(MethodConfig(kind: .dualReplay), training: TrainingDefaults()).driftRefitSteps == nil)
        var bad = MethodConfig(kind: .dualReplay)
        bad.heads.driftRefitSteps = 200_000
        do {
            _ = try MethodSettings.resolve(bad, training: TrainingDefaults())
            Issue.record("driftRefitSteps 200000 was accepted")
        } catch {
            #expect(error.localizedDescription.contains("heads.driftRefitSteps"), "\(error.localizedDescription)")
        }
        let typo = #"{"kind": "dual-replay", "heads": {"driftRefitStep": 5}}"#
        #expect(throws: (any Error).self) { try JSONDecoder().decode(MethodConfig.self, from: Data(typo.utf8)) }
    }
}
