import ArgumentParser
import DualReplay
import Foundation

/// `dualreplay mpi-check`: what to run first on a cluster. Every rank reports its host, pid and
/// MPI library, then the ranks exchange test data through each collective the training uses
/// (uneven float gathers, value gathers, broadcasts from every rank, an agreed failure) and
/// check every byte. Rank 0 prints one JSON object.
struct MPICheckCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "mpi-check",
        abstract: "Check an MPI job's ranks: who they are and whether every collective arrives intact (docs/CLUSTER.md).",
        discussion: """
        Start it as you would start training (mpirun -np N dualreplay mpi-check, srun --mpi=pmix ...). \
        Started by hand it checks one process. Exits non-zero if any exchange differs from what was sent.
        """
    )

    @Option(help: "Floats rank r sends in the gather test: N + r (uneven on purpose).")
    var floats: Int = 1000

    func validate() throws {
        guard floats >= 0 && floats <= 100_000_000 else { throw ValidationError("--floats must be in 0...100000000") }
    }

    struct Report: Codable {
        var ranks: Int
        var library: String?
        var hosts: [String]
        var pids: [Int]
        var allGatherFloats: Bool
        var allGatherValues: Bool
        var broadcasts: Bool
        var agreedFailure: String?
        var ok: Bool
    }

    struct CheckFailure: LocalizedError { var errorDescription: String? }

    func run() throws {
        let job = try Cluster.collective()
        let n = job.size, r = job.rank
        // who is here
        let hosts = try job.allGatherBytes(Array(StateLock.hostName.utf8)).map { String(decoding: $0, as: UTF8.self) }
        let pids = try job.allGather(UInt64(getpid())).map { Int($0) }
        // floats: rank q sends floats + q arbitrary bit patterns (NaNs included), compared bit for bit
        func value(_ q: Int, _ i: Int) -> Float { Float(bitPattern: UInt32(truncatingIfNeeded: q &* 2_654_435_761 &+ i)) }
        let counts = (0..<n).map { floats + $0 }
        let send = (0..<counts[r]).map { value(r, $0) }
        var recv = [Float](repeating: 0, count: counts.reduce(0, +))
        try send.withUnsafeBufferPointer { s in try recv.withUnsafeMutableBufferPointer { try job.allGather(s, into: $0, counts: counts) } }
        var at = 0, floatsOK = true
        for q in 0..<n {
            for i in 0..<counts[q] where recv[at + i].bitPattern != value(q, i).bitPattern { floatsOK = false }
            at += counts[q]
        }
        let values = try job.allGather(UInt64(r) &* 0x9E37_79B9_7F4A_7C15)
        let valuesOK = values == (0..<n).map { UInt64($0) &* 0x9E37_79B9_7F4A_7C15 }
        var bcastOK = true
        for root in 0..<n {
            let mine = (0..<(17 + root)).map { UInt8(truncatingIfNeeded: root &* 31 &+ $0) }
            if try job.broadcast(r == root ? mine : [], root: root) != mine { bcastOK = false }
        }
        // a failure on the last rank reaches every rank as the same error
        var agreed: String?
        do {
            try job.agree { if r == n - 1 && n > 1 { throw CheckFailure(errorDescription: "test failure on rank \(r)") } }
        } catch {
            agreed = error.localizedDescription
        }
        let agreeOK = n == 1 || agreed == JobError.rankFailed(rank: n - 1, size: n, message: "test failure on rank \(n - 1)").localizedDescription
        let all = try job.allGather(floatsOK && valuesOK && bcastOK && agreeOK ? 1 : 0)
        let ok = !all.contains(0)
        if r == 0 {
            let report = Report(ranks: n, library: job is MPICollective ? MPICollective.libraryVersion : nil, hosts: hosts, pids: pids, allGatherFloats: floatsOK,
                                allGatherValues: valuesOK, broadcasts: bcastOK, agreedFailure: agreed, ok: ok)
            let enc = JSONEncoder()
            enc.outputFormatting = [.sortedKeys]
            print(String(decoding: try enc.encode(report), as: UTF8.self))
        }
        if !ok { throw ExitCode(1) }
    }
}
