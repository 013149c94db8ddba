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
}
