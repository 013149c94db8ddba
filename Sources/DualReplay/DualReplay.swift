// DualReplay — continual fine-tuning of a frozen BERT-family encoder without forgetting.
import CKernels
import Foundation

/// Sets the number of threads the kernels use: BLAS's own threads, and the worker threads of
/// data-parallel chunks (`training.gradientChunk`), whose BLAS calls run single-threaded.
public func setComputeThreads(_ n: Int) {
    Parallelism.threads = max(1, n)
    dr_blas_set_threads(Int32(max(1, n)))
    KernelExecutor.use(threads: max(1, n))
}

/// The executor the packed kernels split large calls over (`dr_executor`): Dispatch's
/// concurrentPerform, at most the compute threads at once. It is set for the calling thread
/// only (the one that called `setComputeThreads`), so the workers of our own data-parallel
/// chunks never split their calls again.
enum KernelExecutor {
    nonisolated(unsafe) static let shared: UnsafeMutablePointer<dr_executor> = {
        let p = UnsafeMutablePointer<dr_executor>.allocate(capacity: 1)
        p.initialize(to: dr_executor(run: { _, n, fn, arg in
            nonisolated(unsafe) let fn = fn!, arg = arg
            DispatchQueue.concurrentPerform(iterations: Int(n)) { i in fn(arg, Int64(i)) }
        }, ctx: nil, workers: 1))
        return p
    }()

    static func use(threads: Int) {
        shared.pointee.workers = Int64(threads)
        dr_set_thread_executor(threads > 1 ? UnsafePointer(shared) : nil)
    }
}

/// The process's share of the work: its compute threads and the collective of the job (one
/// process, or the ranks of an MPI launch), and the job's sharded inference over that collective
/// (one per process, so its tally covers every model of the job).
public enum Parallelism {
    nonisolated(unsafe) public static var threads = 1
    nonisolated(unsafe) public static var collective: Collective = SingleProcess() {
        didSet { inference = ShardedInference(collective: collective) }
    }
    nonisolated(unsafe) public static var inference = ShardedInference()
}

/// BLAS at one thread for a stretch of work that runs on our own threads (data-parallel chunks,
/// inference workers), whose results must not depend on BLAS's thread count:
/// `let saved = SingleThreadedBLAS.begin(); defer { SingleThreadedBLAS.end(saved) }`.
enum SingleThreadedBLAS {
    /// What `end` restores: BLAS's thread count and the calling thread's kernel executor (off
    /// too in the stretch, so that a worker running on the calling thread does not split again).
    struct Saved {
        let threads: Int32
        let executor: UnsafePointer<dr_executor>?
    }
    /// Sets BLAS to one thread and the calling thread's executor off; returns what to restore.
    static func begin() -> Saved {
        let saved = Saved(threads: dr_blas_get_threads(), executor: dr_thread_executor())
        if saved.threads != 1 { dr_blas_set_threads(1) }
        dr_set_thread_executor(nil)
        return saved
    }
    static func end(_ saved: Saved) {
        if saved.threads != 1 { dr_blas_set_threads(saved.threads) }
        dr_set_thread_executor(saved.executor)
    }
}
