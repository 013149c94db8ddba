// DualReplay — continual fine-tuning of a frozen BERT-family encoder without forgetting.
import CKernels

/// Sets the number of threads the kernels use: BLAS's own threads, and the worker threads of
/// data-parallel chunks (`training.gradientChunk`), whose BLAS calls run single-threaded.
public func setComputeThreads(_ n: Int) {
    Parallelism.threads = max(1, n)
    dr_blas_set_threads(Int32(max(1, n)))
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
    /// Sets BLAS to one thread; returns the count to restore.
    static func begin() -> Int32 {
        let saved = dr_blas_get_threads()
        if saved != 1 { dr_blas_set_threads(1) }
        return saved
    }
    static func end(_ saved: Int32) { if saved != 1 { dr_blas_set_threads(saved) } }
}
