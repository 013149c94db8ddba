import Foundation

/// How this process was started: alone, or as one rank of a job that a launcher started
/// (`mpirun`, `srun --mpi=pmix`, `mpiexec`). Read from the launcher's environment variables, so a
/// process started by hand never calls `MPI_Init` and runs exactly as a one-process program.
public struct Launch: Equatable, Sendable {
    /// The launcher, as it is named in messages; nil: started by hand (one process).
    public var launcher: String?
    /// This process's rank and the job's rank count as the launcher announced them (the count is
    /// nil where the launcher does not announce it before `MPI_Init`, e.g. PMIx).
    public var rank: Int
    public var size: Int?

    public static let alone = Launch(launcher: nil, rank: 0, size: 1)

    public var isLaunched: Bool { launcher != nil }

    /// Detects the launcher from `environment` (Open MPI's `OMPI_COMM_WORLD_*`, PMIx's
    /// `PMIX_RANK`, PMI's `PMI_RANK`/`PMI_SIZE`). A SLURM step of several tasks without any of
    /// them (`srun` without an MPI plugin) would start that many independent copies of the whole
    /// job, so it is refused.
    public static func detect(_ environment: [String: String] = ProcessInfo.processInfo.environment) throws -> Launch {
        func int(_ key: String) -> Int? { environment[key].flatMap { Int($0.trimmingCharacters(in: .whitespaces)) } }
        if let r = int("OMPI_COMM_WORLD_RANK") {
            return Launch(launcher: "Open MPI's mpirun", rank: r, size: int("OMPI_COMM_WORLD_SIZE"))
        }
        if let r = int("PMIX_RANK") {
            return Launch(launcher: "a PMIx launcher", rank: r, size: int("SLURM_STEP_NUM_TASKS") ?? int("PMIX_SIZE"))
        }
        if let r = int("PMI_RANK") {
            return Launch(launcher: "a PMI launcher", rank: r, size: int("PMI_SIZE"))
        }
        if let tasks = int("SLURM_STEP_NUM_TASKS"), tasks > 1 {
            throw LaunchError.srunWithoutMPI(tasks: tasks, rank: int("SLURM_PROCID") ?? 0)
        }
        return .alone
    }
}

/// The launcher could not start this process as a rank of an MPI job.
public enum LaunchError: LocalizedError, Equatable {
    case srunWithoutMPI(tasks: Int, rank: Int)
    /// The launcher announced `expected` ranks but MPI sees only this process: the launcher is not
    /// the one of the MPI library this binary is linked with.
    case notConnected(launcher: String, expected: Int, library: String)
    case initFailed(launcher: String, message: String)
    case rankMismatch(launcher: String, announced: Int, mpi: Int)

    public var errorDescription: String? {
        switch self {
        case let .srunWithoutMPI(n, r):
            return "srun started \(n) tasks (this is task \(r)) without an MPI plugin: each would run the whole job alone. "
                + "Use `srun --mpi=pmix` (docs/CLUSTER.md), or one task"
        case let .notConnected(l, n, lib):
            return "started by \(l) as one of \(n) ranks, but MPI sees only this process: that launcher does not belong to "
                + "the MPI this binary is linked with (\(lib)); start it with that MPI's mpirun (Debian: openmpi-bin)"
        case let .initFailed(l, m):
            return "started by \(l), but MPI_Init failed: \(m)"
        case let .rankMismatch(l, a, m):
            return "started by \(l) as rank \(a), but MPI says rank \(m): the launcher and the MPI library disagree"
        }
    }
}

/// Failures that every rank of a job sees alike (each rank throws the same error), so the job can
/// end cleanly: rank 0 reports it, every rank leaves MPI and exits non-zero. (A failure on one
/// rank alone makes it abort the whole job instead: `Collective.abort`.)
public enum JobError: LocalizedError, Equatable {
    /// `rank` failed with `message` at a point where the ranks compare notes (`Collective.agree`).
    case rankFailed(rank: Int, size: Int, message: String)
    /// More ranks than units of work (grid runs, gradient chunks): the rest would idle.
    case tooManyRanks(ranks: Int, units: Int, what: String)
    /// A rank does not see the experiment rank 0 sees (config, data, model, code version, threads).
    case protocolMismatch(rank: Int, hash: String, rootHash: String)
    /// A rank's trainable parameters differ from rank 0's before training step `step`.
    case diverged(rank: Int, step: Int, hash: UInt64, rootHash: UInt64)
    /// This build cannot do what was asked with several ranks.
    case unsupported(String)

    public var errorDescription: String? {
        switch self {
        case let .rankFailed(r, n, m):
            return n > 1 ? "rank \(r) of \(n): \(m)" : m
        case let .tooManyRanks(n, u, what):
            return "\(n) ranks for \(u) \(what): start at most \(u) ranks (mpirun -np \(u))"
        case let .protocolMismatch(r, h, root):
            return "rank \(r) sees another experiment than rank 0 (protocol \(h), rank 0: \(root)): every rank must read the same "
                + "config, data, model and code, with the same --threads"
        case let .diverged(r, step, h, root):
            return "rank \(r)'s parameters differ from rank 0's before training step \(step + 1) (hash \(String(h, radix: 16)), rank 0: "
                + "\(String(root, radix: 16))): the ranks are not training the same model; check that every node runs the same build, model and data"
        case .unsupported(let s):
            return s
        }
    }
}
