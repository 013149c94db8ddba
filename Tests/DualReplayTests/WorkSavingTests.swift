import CKernels
import Foundation
import Testing
@testable import DualReplay

/// Work the engine skips must not change a number: the prefix cache of recurring evaluation
/// chunks gives bit-identical logits, before and after the trainable weights move.
@Suite struct WorkSavingTests {
    static func chunk(_ n: Int, seed: UInt64) -> [[Int32]] {
        var rng = SeededRandom(seed: seed)
        return (0..<n).map { i in [1] + (0..<(1 + i % 5)).map { _ in Int32(3 + rng.next() % 15) } + [2] }
    }

    @Test(arguments: [AdapterPlacement.output, .ffn])
    func prefixCacheGivesBitIdenticalLogits(placement: AdapterPlacement) throws {
        let m = TrainingTests.model { $0.adapter = true; $0.adapterLayers = [1]; $0.placement = placement }
        #expect(m.gateFreePrefix == 1)
        let seqs = Self.chunk(7, seed: 11), gates = [Int32](repeating: 1, count: 7)
        let plain = m.logits(seqs, gateIds: gates)
        m.prefixCache = PrefixCache(byteBudget: 1 << 20)
        let first = m.logits(seqs, gateIds: gates, reusePrefix: true)
        let again = m.logits(seqs, gateIds: gates, reusePrefix: true)
        #expect(m.prefixCache!.misses == 1 && m.prefixCache!.hits == 1 && m.prefixCache!.count == 1)
        #expect(first == plain && again == plain)
        // the trainable weights move; the cached prefix stays valid
        let adam = AdamWStep(config: OptimizerConfig())
        for s in 0..<3 { _ = try m.trainStep(DataParallelTests.batch(m, seed: UInt64(s)), weights: DataParallelTests.weights, optimizer: adam, lr: 1e-2) }
        m.prefixCache = nil
        let plainAfter = m.logits(seqs, gateIds: gates)
        #expect(plainAfter != plain, "training did not move the logits: the check would be vacuous")
        m.prefixCache = PrefixCache(byteBudget: 1 << 20)
        _ = m.logits(seqs, gateIds: gates, reusePrefix: true)
        #expect(m.logits(seqs, gateIds: gates, reusePrefix: true) == plainAfter)
        // another chunk of the same rows (another composition) is another entry
        _ = m.logits(Array(seqs.prefix(3)), gateIds: Array(gates.prefix(3)), reusePrefix: true)
        #expect(m.prefixCache!.count == 2)
    }

    @Test func prefixCacheRespectsItsBudgetAndIsOffWithoutPrefix() throws {
        let m = TrainingTests.model { $0.adapter = true; $0.adapterLayers = [1] }
        m.prefixCache = PrefixCache(byteBudget: 64)
        let seqs = Self.chunk(4, seed: 2)
        let a = m.logits(seqs, gateIds: [0, 0, 1, 1], reusePrefix: true)
        #expect(m.prefixCache!.count == 0 && m.prefixCache!.bytes == 0)
        #expect(m.logits(seqs, gateIds: [0, 0, 1, 1], reusePrefix: true) == a)
        // adapters on every layer: no gate-free prefix, the cache is never consulted
        let all = TrainingTests.model { $0.adapter = true }
        all.prefixCache = PrefixCache(byteBudget: 1 << 20)
        _ = all.logits(seqs, gateIds: [0, 0, 1, 1], reusePrefix: true)
        #expect(all.gateFreePrefix == 0 && all.prefixCache!.misses == 0 && all.prefixCache!.count == 0)
    }

    @Test func routerChunkFeaturesAreTheBatchedPassOnceAndForAll() throws {
        let m = TrainingTests.model { $0.adapter = true }
        let router = DomainRouter(model: m)
        let seqs = Self.chunk(6, seed: 5), batch = PackedBatch(seqs)
        let direct = m.routerFeatures(batch)
        #expect(router.chunkFeatures(batch) == direct)
        // the trainable weights move: frozen features do not, and the cached chunk is returned as is
        let adam = AdamWStep(config: OptimizerConfig())
        _ = try m.trainStep(DataParallelTests.batch(m), weights: DataParallelTests.weights, optimizer: adam, lr: 1e-2)
        #expect(router.chunkFeatures(batch) == direct && m.routerFeatures(batch) == direct)
        // routing a cached chunk decides as the live pass does
        let live = RoutedPredictor(model: m, router: router).predictChunk(seqs, features: .live)
        let cached = RoutedPredictor(model: m, router: router).predictChunk(seqs, features: .cached)
        #expect(live.domains == cached.domains && live.classes == cached.classes)
    }

    /// Router training reads each example's feature from the batched pass of its domain's
    /// canonical chunks (shared with the prototypes): no feature pass runs one example at a time,
    /// and only the buffered examples' features stay in memory.
    @Test func routerTrainingFeaturesAreBatchedOncePerDomain() throws {
        let s = try ContinualState.create(config: StateTests.config(), encoder: try StateTests.encoder(), generalTexts: StateTests.general, modelPath: nil)
        var chunks = 0
        for (i, name) in ["a", "b", "c"].enumerated() {
            let d = StateTests.domain(name, base: 6 * i, train: 40)
            _ = try s.onboard(d)
            chunks += (d.train.count + inferenceChunk - 1) / inferenceChunk
            let router = s.router!
            #expect(router.trainingFeaturePasses == chunks, "domain \(name)")
            let keys = Set(router.trainingFeatures.keys)
            let lastRows = Set(d.train.map { DomainRouter.FeatureKey(domain: Int32(i), ids: s.encoder.tokenizer.encode($0.text, maxLength: 16)) })
            let buffered = Set(s.learner.bufferedItems(before: i + 1).filter { !$0.isGeneral }.map {
                DomainRouter.FeatureKey(domain: $0.domain, ids: $0.tokenIds) })
            #expect(keys.isSubset(of: buffered.union(lastRows)), "domain \(name): features kept beyond the buffer and the newest rows")
            #expect(buffered.isSubset(of: keys), "domain \(name): a buffered example has no kept feature")
        }
        #expect(chunks >= 6)
    }

    /// A pair without a kept feature (a state saved before features were kept) gets the batched
    /// pass over its domain's missing sequences: the same bits as `domainFeatures` on that list.
    @Test func missingTrainingFeaturesAreComputedPerDomainInChunks() throws {
        let m = TrainingTests.model { $0.adapter = true }
        let a = DomainRouter(model: m), b = DomainRouter(model: m)
        let s0 = Self.chunk(5, seed: 3), s1 = Self.chunk(4, seed: 8)
        let ex = s0.map { ($0, Int32(0)) } + s1.map { ($0, Int32(1)) }
        let got = try a.trainingFeatures(of: ex)
        #expect(a.trainingFeaturePasses == 2)
        let f0 = try b.domainFeatures(domain: 0, sequences: s0), f1 = try b.domainFeatures(domain: 1, sequences: s1)
        #expect(got.flatMap { $0 } == f0 + f1)
        _ = try a.trainingFeatures(of: ex)
        #expect(a.trainingFeaturePasses == 2, "kept features were computed again")
    }
}
