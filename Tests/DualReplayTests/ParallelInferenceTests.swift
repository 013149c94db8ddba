import CKernels
import Foundation
import Testing
@testable import DualReplay

/// Inference chunks on several threads at once (`ContinualModel.inferenceThreads`,
/// `training.parallelInference`): every number is the one of the chunks run in order. (In the
/// serialized suite of the other tests that set BLAS's process-wide thread count.)
extension DataParallelTests {
    /// The whole sharded run of `DataParallelTests` (three domains: validation scores, R rows,
    /// router confusion, probe and multi-intent diagnostics, parameters, stored logits) with its
    /// inference maps on 2 and 3 threads is the in-order run bit for bit, once with the in-order
    /// run's BLAS on one thread and once on two (each parallel chunk runs single-threaded BLAS,
    /// so this is also the check that BLAS's threads do not change a chunk's bits).
    @Test(arguments: [2, 3])
    func parallelInferenceChunksAreTheInOrderRun(threads: Int) throws {
        let saved = dr_blas_get_threads()
        defer { dr_blas_set_threads(saved) }
        for blas: Int32 in [1, 2] {
            dr_blas_set_threads(blas)
            let reference = try Self.shardedRun(SingleProcess())
            #expect(reference.tally.totalChunks > reference.tally.passes, "no map had two chunks: the check would be vacuous")
            let run = try Self.shardedRun(SingleProcess(), inferenceThreads: threads)
            #expect(run.validation == reference.validation, "validation scores differ")
            #expect(run.rows == reference.rows && run.confusion == reference.confusion, "R rows differ")
            #expect(run.diagnostics == reference.diagnostics, "probe or multi-intent scores differ")
            #expect(run.parameters == reference.parameters, "parameters differ")
            #expect(run.bufferLogits == reference.bufferLogits, "stored logits differ")
            #expect(run.tally == reference.tally, "the parallel maps computed other chunks: \(run.tally) against \(reference.tally)")
        }
    }

    /// Two in-process ranks, each running its share of the chunks on two threads: the
    /// one-process, in-order run.
    @Test func ranksWithThreadsAreTheOneProcessRun() throws {
        let reference = try Self.onRanks(1) { try Self.shardedRun($0) }[0].get()
        let byRank = try Self.onRanks(2) { try Self.shardedRun($0, inferenceThreads: 2) }.map { try $0.get() }
        for (r, run) in byRank.enumerated() {
            #expect(run.validation == reference.validation && run.rows == reference.rows, "rank \(r): scores differ")
            #expect(run.parameters == reference.parameters && run.bufferLogits == reference.bufferLogits, "rank \(r): parameters differ")
        }
    }

    /// The chunks really run at once (two threads inside bodies at the same time), come back in
    /// chunk order, and a failing chunk fails the map with the error of the first failing chunk
    /// in chunk order, whichever thread met it first.
    @Test func chunksRunAtOnceAndComeBackInOrder() throws {
        let s = ShardedInference()
        let lock = NSLock()
        var inside = 0, most = 0
        let workers = ShardedInference.Workers(threads: 2) { _, run in run() }
        let out: [[Int32]] = try s.map(8, rows: { _ in 1 }, workers: workers) { i in
            lock.withLock { inside += 1; most = max(most, inside) }
            // wait (bounded) for the other thread to enter too
            let deadline = Date().addingTimeInterval(2)
            while lock.withLock({ inside }) < 2 && Date() < deadline && most < 2 { usleep(100) }
            lock.withLock { inside -= 1 }
            return [Int32(i), Int32(i * i)]
        }
        #expect(out == (0..<8).map { [Int32($0), Int32($0 * $0)] })
        #expect(most == 2, "the chunks never overlapped")
        struct Fail: Error, Equatable { let chunk: Int }
        #expect(throws: Fail(chunk: 3)) {
            let _: [[Int32]] = try s.map(8, rows: { _ in 1 }, workers: workers) { i in
                if i == 3 || i == 6 { throw Fail(chunk: i) }
                return [Int32(i)]
            }
        }
    }

    /// Each worker runs in its own pass context: inside a bound chunk the model's current
    /// context is the worker's, outside it the main one, and a map nested in a chunk runs in order.
    @Test func workersBindTheirOwnContexts() throws {
        let m = TrainingTests.model { $0.adapter = true }
        m.inferenceThreads = 2
        let workers = try #require(m.inferenceWorkers)
        #expect(m.current === m.main)
        let lock = NSLock()
        var seen: [ObjectIdentifier] = []
        DispatchQueue.concurrentPerform(iterations: 2) { t in
            workers.bind(t) {
                lock.withLock { seen.append(ObjectIdentifier(m.current)) }
                #expect(m.inferenceWorkers == nil, "a map nested in a chunk would start threads of its own")
            }
        }
        #expect(Set(seen) == Set(m.workers.prefix(2).map(ObjectIdentifier.init)))
        #expect(m.current === m.main)
        // the same chunk gives the same logits on a worker and on the main context
        let seqs = WorkSavingTests.chunk(5, seed: 9), gates: [Int32] = [0, 1, 0, 1, 1]
        let plain = m.logits(seqs, gateIds: gates)
        var onWorker: [Float] = []
        workers.bind(1) { onWorker = m.logits(seqs, gateIds: gates) }
        #expect(onWorker == plain)
    }
}
