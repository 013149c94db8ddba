import Foundation

extension Collective {
    /// Every rank's bytes, in rank order (lengths first, then one broadcast per rank).
    public func allGatherBytes(_ bytes: [UInt8]) throws -> [[UInt8]] {
        if size == 1 { return [bytes] }
        let lengths = try allGather(UInt64(bytes.count))
        return try (0..<size).map { r in lengths[r] == 0 ? [] : try broadcast(r == rank ? bytes : [], root: r) }
    }

    /// A barrier for ranks that may wait long for a slower one (whole runs of a grid): under MPI
    /// the waiting ranks sleep instead of spinning on the cores the others compute on.
    public func waitForAll() throws {
        if let m = self as? MPICollective { try m.sleepingBarrier() } else { try barrier() }
    }

    /// Runs `body` on every rank, then the ranks compare notes: if it threw on any rank, every
    /// rank throws `JobError.rankFailed` with the lowest failing rank's message, so the job ends
    /// cleanly instead of hanging in the next collective. `body` must not call collectives itself
    /// (a rank that failed before one would leave the others waiting). One process: `body` as is.
    public func agree<T>(_ body: () throws -> T) throws -> T {
        if size == 1 { return try body() }
        let outcome: Result<T, Error>
        do { outcome = .success(try body()) } catch { outcome = .failure(error) }
        var message = ""
        if case .failure(let e) = outcome { message = Self.message(of: e) }
        let failed = try allGather(message.isEmpty ? 0 : 1)
        if let r = failed.firstIndex(of: 1) {
            let text = try broadcast(r == rank ? Array(message.utf8) : [], root: r)
            throw JobError.rankFailed(rank: r, size: size, message: String(decoding: text, as: UTF8.self))
        }
        return try outcome.get()
    }

    /// An error's message, never empty (an empty one would read as success).
    static func message(of error: Error) -> String {
        if case JobError.rankFailed(_, _, let m) = error { return m }
        let s = error.localizedDescription
        return s.isEmpty ? "\(error)" : s
    }
}
