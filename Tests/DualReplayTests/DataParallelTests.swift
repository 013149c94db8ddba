import CKernels
import Foundation
import Testing
@testable import DualReplay

/// Data-parallel chunks (`ChunkedReduction`): the gradient is still the loss's gradient, a batch
/// in one chunk is the plain pass, and the parameters after several steps are bit-identical
/// whatever the number of threads and ranks that computed the chunks.
@Suite(.serialized) struct DataParallelTests {
    /// Nine rows over both domains, with logit and anchoring targets (every loss term).
    static func batch(_ m: ContinualModel, rows: Int = 9, seed: UInt64 = 3) -> TrainingBatch {
        var rng = SeededRandom(seed: seed)
        var tb = TrainingBatch()
        for i in 0..<rows {
            let d = i % 2, r = m.domains[d].classRange
            let ids: [Int32] = [1] + (0..<(2 + i % 4)).map { _ in Int32(3 + rng.next() % 15) } + [2]
            switch i % 3 {
            case 0: tb.append(ids: ids, gate: Int32(d), label: Int32(r.lowerBound + i % r.count), range: r)
            case 1: tb.append(ids: ids, gate: Int32(d), label: Int32(r.lowerBound), range: r, logits: rng.floats(r.count))
            default: tb.append(ids: ids, gate: Int32(d), label: -1, range: r, anchor: rng.floats(8))
            }
        }
        return tb
    }

    static let weights: LossWeights = { var w = LossWeights(); w.logitReplay = 0.7; w.anchor = 0.5; w.orthogonality = 0.3; return w }()

    static func specs() -> [(String, (inout ModelSpec) -> Void)] {
        [("adapter", { $0.adapter = true }), ("houlsby", { $0.adapter = true; $0.placement = .ffn }),
         ("olora", { $0.lora = true; $0.loraPerDomain = true }), ("full", { $0.fullFineTune = true })]
    }

    /// Parameters after `steps` AdamW steps on the same batches.
    /// `blasThreads` nil leaves BLAS as it is (ranks sharing one process must not change it).
    static func train(_ configure: (inout ModelSpec) -> Void, chunking: ChunkedReduction?, blasThreads: Int32? = 1, steps: Int = 4) throws -> [Float] {
        let m = TrainingTests.model(configure)
        m.chunking = chunking
        let saved = dr_blas_get_threads()
        if let blasThreads { dr_blas_set_threads(blasThreads) }
        defer { if blasThreads != nil { dr_blas_set_threads(saved) } }
        let adam = AdamWStep(config: OptimizerConfig())
        for s in 0..<steps { _ = try m.trainStep(batch(m, seed: UInt64(s)), weights: weights, optimizer: adam, lr: 1e-2) }
        return Array(m.store.values.buffer)
    }

    @Test func chunkedGradientsMatchFiniteDifferences() throws {
        for (name, spec) in Self.specs() where name != "full" {
            let m = TrainingTests.model(spec)
            m.chunking = ChunkedReduction(chunkSize: 1, threads: 2)
            try TrainingTests.checkModelGradients(m, name: "chunked \(name)", groups: ["adapter", "gate", "head", "lora"])
        }
    }

    @Test func oneChunkIsThePlainPass() throws {
        for (name, spec) in Self.specs() {
            let plain = try Self.train(spec, chunking: nil)
            let one = try Self.train(spec, chunking: ChunkedReduction(chunkSize: 64, threads: 2))
            #expect(plain == one, "\(name): a batch in one chunk must be the plain pass")
        }
    }

    @Test func chunkedStepsAreIdenticalForAnyThreadCount() throws {
        for (name, spec) in Self.specs() {
            let one = try Self.train(spec, chunking: ChunkedReduction(chunkSize: 2, threads: 1))
            for t in [2, 3, 5] {
                let many = try Self.train(spec, chunking: ChunkedReduction(chunkSize: 2, threads: t), blasThreads: 2)
                #expect(one == many, "\(name): \(t) threads differ from 1")
            }
            // several chunks really change the summation order (the test would be vacuous otherwise)
            let plain = try Self.train(spec, chunking: nil)
            #expect(plain != one, "\(name): chunks of 2 gave exactly the one-pass result")
            let close = zip(plain, one).allSatisfy { abs($0 - $1) <= 1e-4 * max(1, abs($0)) }
            #expect(close, "\(name): chunked training drifted from the one-pass result")
        }
    }

    /// Parameters each in-process rank ends with, one thread per rank (a dispatch pool may run
    /// fewer at once, and ranks wait for each other); BLAS single-threaded for the whole group.
    static func trainOnRanks(_ ranks: Int, chunkSize: Int, threads: @escaping (Int) -> Int) -> [[Float]] {
        let spec: (inout ModelSpec) -> Void = { $0.adapter = true }
        let group = LoopbackGroup(size: ranks)
        let saved = dr_blas_get_threads()
        dr_blas_set_threads(1)
        defer { dr_blas_set_threads(saved) }
        final class Results: @unchecked Sendable { var byRank: [[Float]]; init(_ n: Int) { byRank = Array(repeating: [], count: n) } }
        let results = Results(ranks)
        let lock = NSLock(), done = DispatchGroup()
        for r in 0..<ranks {
            done.enter()
            Thread {
                let out = try? Self.train(spec, chunking: ChunkedReduction(chunkSize: chunkSize, threads: threads(r), collective: group.rank(r)), blasThreads: nil)
                lock.lock(); results.byRank[r] = out ?? []; lock.unlock()
                done.leave()
            }.start()
        }
        done.wait()
        return results.byRank
    }

    @Test(arguments: [2, 3, 4])
    func chunkedStepsAreIdenticalForAnyRankCount(ranks: Int) throws {
        let reference = try Self.train({ $0.adapter = true }, chunking: ChunkedReduction(chunkSize: 2, threads: 1))
        let byRank = Self.trainOnRanks(ranks, chunkSize: 2) { 1 + $0 % 2 }
        for r in 0..<ranks { #expect(byRank[r] == reference, "rank \(r) of \(ranks) differs from the one-process run") }
    }

    /// A batch with fewer chunks than ranks (an epoch's last, short batch) leaves the ranks past
    /// its chunks idle: same result. (Starting more ranks than a full batch has chunks is refused
    /// by the CLI, MPITests.)
    @Test func ranksPastAShortBatchsChunksIdle() throws {
        let reference = try Self.train({ $0.adapter = true }, chunking: ChunkedReduction(chunkSize: 4, threads: 1))
        let byRank = Self.trainOnRanks(6, chunkSize: 4) { _ in 1 }
        for r in 0..<6 { #expect(byRank[r] == reference, "rank \(r) of 6 differs from the one-process run") }
    }
}

/// In-process ranks for tests: each rank a thread; allGather meets at a barrier.
final class LoopbackGroup {
    let size: Int
    private let cond = NSCondition()
    private var arrived = 0, generation = 0
    private var slots: [[Float]]
    private var words: [UInt64]
    private var bytes: [UInt8] = []
    init(size: Int) { self.size = size; slots = Array(repeating: [], count: size); words = Array(repeating: 0, count: size) }

    func rank(_ r: Int) -> Collective { Member(group: self, rank: r) }

    /// Every rank deposits, waits for the others, reads, and waits again before the next round.
    func exchange<T>(_ r: Int, deposit: () -> Void, read: () -> T) -> T {
        barrier { deposit() }
        let v = read()
        barrier {}
        return v
    }
    private func barrier(_ first: () -> Void) {
        cond.lock()
        first()
        let g = generation
        arrived += 1
        if arrived == size { arrived = 0; generation += 1; cond.broadcast() } else { while generation == g { cond.wait() } }
        cond.unlock()
    }

    final class Member: Collective {
        let group: LoopbackGroup
        let rank: Int
        init(group: LoopbackGroup, rank: Int) { self.group = group; self.rank = rank }
        var size: Int { group.size }
        func allGather(_ send: UnsafeBufferPointer<Float>, into recv: UnsafeMutableBufferPointer<Float>, counts: [Int]) throws {
            let all: [Float] = group.exchange(rank, deposit: { group.slots[rank] = Array(send) }, read: { group.slots.flatMap { $0 } })
            precondition(all.count == recv.count && counts.reduce(0, +) == all.count)
            for i in all.indices { recv[i] = all[i] }
        }
        func allGather(_ value: UInt64) throws -> [UInt64] { group.exchange(rank, deposit: { group.words[rank] = value }, read: { group.words }) }
        func broadcast(_ bytes: [UInt8], root: Int) throws -> [UInt8] {
            group.exchange(rank, deposit: { if rank == root { group.bytes = bytes } }, read: { group.bytes })
        }
        func barrier() throws { group.exchange(rank, deposit: {}, read: { () }) }
        func abort(code: Int32) -> Never { fatalError("rank \(rank) aborted with code \(code)") }
    }
}
