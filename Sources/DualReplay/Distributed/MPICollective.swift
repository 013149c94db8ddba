import CMPIShim
import Foundation

/// An MPI call that returned an error (MPI_COMM_WORLD runs with MPI_ERRORS_RETURN).
public enum CollectiveError: LocalizedError, Equatable {
    case mpi(operation: String, code: Int32, message: String)
    case countTooLarge(operation: String, count: Int)

    public var errorDescription: String? {
        switch self {
        case let .mpi(op, code, m): return "\(op) failed (MPI error \(code)): \(m)"
        case let .countTooLarge(op, n): return "\(op): \(n) elements do not fit MPI's int counts (at most \(Int32.max))"
        }
    }
}

/// The ranks of an MPI job (MPI_COMM_WORLD) through the C shim (`dr_mpi.h`). One per process:
/// `Cluster.collective()` makes it when a launcher started the process.
public final class MPICollective: Collective, @unchecked Sendable {
    public let rank: Int
    public let size: Int
    /// MPI_Init grants MPI_THREAD_SERIALIZED: calls from several threads take turns here.
    private let lock = NSLock()

    /// MPI_Init (only for a process a launcher started: `Launch.detect`), then checks that MPI
    /// sees the job the launcher announced.
    init(launch: Launch) throws {
        let name = launch.launcher ?? "a launcher"
        var provided: Int32 = 0
        let rc = dr_mpi_init(&provided)
        guard rc == 0 else { throw LaunchError.initFailed(launcher: name, message: Self.describe(rc)) }
        var r: Int32 = 0, n: Int32 = 0
        try Self.check(dr_mpi_rank(&r), "MPI_Comm_rank")
        try Self.check(dr_mpi_size(&n), "MPI_Comm_size")
        rank = Int(r)
        size = Int(n)
        if let expected = launch.size, expected > 1, size == 1 {
            throw LaunchError.notConnected(launcher: name, expected: expected, library: Self.libraryVersion)
        }
        guard rank == launch.rank else { throw LaunchError.rankMismatch(launcher: name, announced: launch.rank, mpi: rank) }
    }

    /// The first line of MPI_Get_library_version.
    public static var libraryVersion: String {
        var buf = [CChar](repeating: 0, count: 512)
        dr_mpi_library_version(&buf, buf.count)
        let s = String(decoding: buf.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        return s.split(separator: "\n").first.map { String($0).trimmingCharacters(in: .whitespaces) } ?? s
    }

    static func describe(_ code: Int32) -> String {
        var buf = [CChar](repeating: 0, count: 512)
        dr_mpi_error_string(code, &buf, buf.count)
        return String(decoding: buf.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    static func check(_ code: Int32, _ operation: String) throws {
        guard code == 0 else { throw CollectiveError.mpi(operation: operation, code: code, message: describe(code)) }
    }

    private func serialized<T>(_ body: () throws -> T) rethrows -> T {
        lock.lock(); defer { lock.unlock() }
        return try body()
    }

    private static func int32(_ n: Int, _ operation: String) throws -> Int32 {
        guard let v = Int32(exactly: n) else { throw CollectiveError.countTooLarge(operation: operation, count: n) }
        return v
    }

    public func allGather(_ send: UnsafeBufferPointer<Float>, into recv: UnsafeMutableBufferPointer<Float>, counts: [Int]) throws {
        precondition(counts.count == size && counts[rank] == send.count && recv.count == counts.reduce(0, +),
                     "allGather: one count per rank, this rank's count is its send buffer, recv holds them all")
        let op = "MPI_Allgatherv"
        let c = try counts.map { try Self.int32($0, op) }
        var displs: [Int32] = [], at = 0
        for n in counts { displs.append(try Self.int32(at, op)); at += n }
        var dummy: Float = 0
        try serialized {
            try withUnsafeMutablePointer(to: &dummy) { d in
                try Self.check(dr_mpi_allgatherv_float(send.baseAddress ?? UnsafePointer(d), c[rank], recv.baseAddress ?? d, c, displs), op)
            }
        }
    }

    public func allGather(_ value: UInt64) throws -> [UInt64] {
        var out = [UInt64](repeating: 0, count: size)
        try serialized { try Self.check(dr_mpi_allgather_u64(value, &out), "MPI_Allgather") }
        return out
    }

    public func broadcast(_ bytes: [UInt8], root: Int) throws -> [UInt8] {
        precondition((0..<size).contains(root), "broadcast: root \(root) is not a rank of \(size)")
        return try serialized {
            var n = UInt64(rank == root ? bytes.count : 0)
            try Self.check(dr_mpi_bcast_bytes(&n, 8, Int32(root)), "MPI_Bcast")
            var out = rank == root ? bytes : [UInt8](repeating: 0, count: Int(n))
            if n > 0 { try out.withUnsafeMutableBytes { try Self.check(dr_mpi_bcast_bytes($0.baseAddress, Int(n), Int32(root)), "MPI_Bcast") } }
            return out
        }
    }

    public func barrier() throws {
        try serialized { try Self.check(dr_mpi_barrier(), "MPI_Barrier") }
    }

    /// A barrier that sleeps while it waits (1 ms polls) instead of spinning on a core.
    public func sleepingBarrier() throws {
        try serialized { try Self.check(dr_mpi_barrier_sleeping(1000), "MPI_Ibarrier") }
    }

    public func abort(code: Int32) -> Never {
        dr_mpi_abort(code)
        exit(code)  // MPI_Abort does not return; this only satisfies the type
    }

    /// MPI_Finalize (at the end of a job that did not fail).
    func finalize() {
        serialized { if dr_mpi_active() != 0 { _ = dr_mpi_finalize() } }
    }
}

/// The collective of this process, made once: `SingleProcess` unless a launcher started it
/// (then MPI is initialised, the only place that does).
public enum Cluster {
    nonisolated(unsafe) private static var made: Collective?
    private static let lock = NSLock()

    /// This process's collective; throws `LaunchError` when a launcher started it but MPI cannot
    /// join the job.
    public static func collective(environment: [String: String] = ProcessInfo.processInfo.environment) throws -> Collective {
        lock.lock(); defer { lock.unlock() }
        if let c = made { return c }
        let launch = try Launch.detect(environment)
        let c: Collective = launch.isLaunched ? try MPICollective(launch: launch) : SingleProcess()
        made = c
        return c
    }

    /// The collective if one was made (nil: nothing distributed happened in this process).
    public static var current: Collective? {
        lock.lock(); defer { lock.unlock() }
        return made
    }

    /// Leaves MPI if it was joined (call once, at the end of a run every rank finished alike).
    public static func finish() {
        (current as? MPICollective)?.finalize()
    }
}
