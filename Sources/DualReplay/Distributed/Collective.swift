import Foundation

/// The processes that train one model together: one process (`SingleProcess`) or the ranks of an
/// MPI job. Every operation is collective: all ranks call it in the same order. Data-parallel
/// training never sums floats across ranks inside the collective (float addition is not
/// associative, so an all-reduce would make results depend on the rank count): ranks gather each
/// other's chunk gradients and every rank adds them in chunk order itself
/// (`ChunkedReduction`).
public protocol Collective: AnyObject {
    var rank: Int { get }
    var size: Int { get }
    /// Rank r contributes `send` (`counts[r]` floats); every rank receives the concatenation in
    /// rank order in `recv` (sum of `counts` floats).
    func allGather(_ send: UnsafeBufferPointer<Float>, into recv: UnsafeMutableBufferPointer<Float>, counts: [Int]) throws
    /// Small values (hashes, loss bit patterns, counters): one per rank, in rank order.
    func allGather(_ value: UInt64) throws -> [UInt64]
    /// Rank `root`'s bytes on every rank.
    func broadcast(_ bytes: [UInt8], root: Int) throws -> [UInt8]
    func barrier() throws
    /// Stops every rank of the job (a failed rank stops the job; it never hangs it).
    func abort(code: Int32) -> Never
}

/// The one-process collective: rank 0 of 1.
public final class SingleProcess: Collective {
    public init() {}
    public var rank: Int { 0 }
    public var size: Int { 1 }
    public func allGather(_ send: UnsafeBufferPointer<Float>, into recv: UnsafeMutableBufferPointer<Float>, counts: [Int]) throws {
        precondition(counts == [send.count] && recv.count == send.count, "one rank gathers only its own floats")
        if let s = send.baseAddress, let r = recv.baseAddress { r.update(from: s, count: send.count) }
    }
    public func allGather(_ value: UInt64) throws -> [UInt64] { [value] }
    public func broadcast(_ bytes: [UInt8], root: Int) throws -> [UInt8] { bytes }
    public func barrier() throws {}
    public func abort(code: Int32) -> Never { exit(code) }
}
