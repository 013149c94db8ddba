import CKernels
import Foundation

/// Inference over the ranks of a data-parallel job: evaluation rows, validation scores, intent
/// prototypes' features, the logits stored for replay. The work comes as canonical chunks
/// (`inferenceChunk` rows each, cut per domain exactly as one process cuts them, so no number
/// depends on the rank count); chunk i is computed by rank (i + key) mod N, where the pass's `key`
/// is a hash of its first chunk (`key(of:)`), and the chunks' outputs are
/// gathered so that every rank holds all of them, in chunk order, bit for bit. Every rank needs
/// the whole result (validation scores steer the buffer quotas on every rank; rank 0 writes).
///
/// Like every collective operation, `map` is called by all ranks in the same order with the same
/// chunks; the chunks' bodies are local (they must not call `map` or a collective themselves).
/// A body that throws on one rank does not leave the others waiting: its message travels with
/// the gathered outputs, and every rank throws `JobError.rankFailed` (the `agree` pattern). One
/// process: the bodies run in order and their errors are thrown as they are.
public final class ShardedInference {
    public let collective: Collective

    public init(collective: Collective = SingleProcess()) { self.collective = collective }

    /// Chunks and utterances this rank computed, and those of every map it took part in (the
    /// whole job's) and how many maps (`passes`): a map of c chunks gives each rank ⌊c/N⌋ or
    /// ⌈c/N⌉ of them, so a rank's share is within `passes` chunks of totalChunks/N.
    public struct Tally: Equatable, Sendable {
        public var chunks = 0, rows = 0
        public var totalChunks = 0, totalRows = 0, passes = 0
        public init(chunks: Int = 0, rows: Int = 0, totalChunks: Int = 0, totalRows: Int = 0, passes: Int = 0) {
            self.chunks = chunks; self.rows = rows; self.totalChunks = totalChunks; self.totalRows = totalRows; self.passes = passes
        }
    }
    public var tally: Tally { lock.lock(); defer { lock.unlock() }; return counts }
    /// One process may run models on several threads at once (tests), all on the process's
    /// one-process instance: the tally is kept under a lock.
    private var counts = Tally()
    private let lock = NSLock()
    private func record(_ change: (inout Tally) -> Void) { lock.lock(); change(&counts); lock.unlock() }
    /// What the maps' gathers moved and how long they took (the inference half; 0 in one process).
    public private(set) var communication = CommunicationStats()

    /// Test hook (`DR_CRASH_AT=evalfail:N`, `CrashInjection`): called with this process's running
    /// count of computed chunks before each one; a throw is that chunk's failure.
    nonisolated(unsafe) static var faultInjection: ((Int) throws -> Void)?

    /// The rank that computes chunk `i` of a map with key `key`. A pass that recurs after every
    /// domain (evaluation rows, validation) starts with the same chunk each time, so each of its
    /// chunks stays on one rank (where its frozen prefix and router features are cached); the
    /// one-off passes (a domain's prototypes, its stored logits) start on ranks spread by their
    /// first chunk, so a short pass does not always land on rank 0.
    public func owner(ofChunk i: Int, key: UInt64) -> Int { Int((UInt64(i) &+ key % UInt64(collective.size)) % UInt64(collective.size)) }

    /// A pass's key: a hash of its first chunk's token ids (0 for none, or one process).
    public func key(of firstChunk: [[Int32]]?) -> UInt64 {
        guard collective.size > 1, let firstChunk else { return 0 }
        var h = FNV1a()
        for s in firstChunk {
            var n = UInt32(s.count)
            withUnsafeBytes(of: &n) { h.add($0) }
            s.withUnsafeBytes { h.add($0) }
        }
        return h.value
    }

    private var inMap = false

    /// How a one-process share of a map may run on several threads: `threads` workers, and
    /// `bind(t, run)`, which runs `run` with worker t's own buffers (the model's worker pass
    /// contexts, `ContinualModel.inferenceWorkers`). nil: the chunks run in order on the calling
    /// thread, as they always did.
    public struct Workers {
        public var threads: Int
        public var bind: (Int, () -> Void) -> Void
        public init(threads: Int, bind: @escaping (Int, () -> Void) -> Void) { self.threads = threads; self.bind = bind }
    }

    /// `body(i)` for every chunk i in 0..<count (on rank `owner(ofChunk: i, key: key)`), on every
    /// rank, in chunk order. `rows(i)`: chunk i's utterances, for the tally. `T` is a plain value
    /// type (Int32, Float): outputs are gathered as their bytes.
    ///
    /// With `workers` of two or more threads, this rank's chunks run on them at once, each
    /// chunk's BLAS single-threaded, and come back in chunk order. A chunk's output does not
    /// depend on which thread ran it or beside which other chunk (each runs alone in its own
    /// buffers); `DataParallelTests.parallelInferenceChunksAreTheInOrderRun` checks it against the chunks run in order.
    public func map<T: BitwiseCopyable>(_ count: Int, rows: (Int) -> Int, key: UInt64 = 0, workers: Workers? = nil,
                                        _ body: (Int) throws -> [T]) throws -> [[T]] {
        let size = collective.size, rank = collective.rank
        guard count > 0 else { return [] }
        let utterances = (0..<count).reduce(0) { $0 + rows($1) }
        record { $0.totalChunks += count; $0.passes += 1; $0.totalRows += utterances }
        func compute(_ i: Int) throws -> [T] {
            try Self.faultInjection?(tally.chunks)
            let out = try body(i)
            record { $0.chunks += 1; $0.rows += rows(i) }
            return out
        }
        let mine = size == 1 ? Array(0..<count) : (0..<count).filter { owner(ofChunk: $0, key: key) == rank }
        if size == 1 && (workers?.threads ?? 1) < 2 { return try mine.map(compute) }
        // (ranks call collectives from one thread; one process may nest maps harmlessly)
        precondition(size == 1 || !inMap, "ShardedInference.map: a chunk's body must not start another map (it would be a collective inside a chunk)")
        inMap = true
        defer { inMap = false }

        // this rank's chunks: in order until the first failure, or on the workers
        let results = try Self.run(mine.count, workers: workers) { try compute(mine[$0]) }
        if size == 1 { return try results.map { try $0.get() } }
        // packed as words: per chunk its element count, then its bytes
        var words: [UInt32] = [], failure: String?
        for r in results {
            switch r {
            case .success(let out): Self.pack(out, into: &words)
            case .failure(let error): failure = SingleProcess.message(of: error)
            }
            if failure != nil { break }
        }
        if let failure { words = []; Self.pack(Array(failure.utf8), into: &words) }
        // round 1: every rank's word count, its top bit set for a failure message
        let t0 = WallClock.now()
        defer { communication.inferenceSeconds += WallClock.seconds(since: t0) }
        let failedBit: UInt64 = 1 << 63
        let heads = try collective.allGather(UInt64(words.count) | (failure == nil ? 0 : failedBit))
        let counts = heads.map { Int($0 & ~failedBit) }, total = counts.reduce(0, +)
        communication.inferencePasses += 1
        communication.inferenceBytes += heads.count * MemoryLayout<UInt64>.size + total * MemoryLayout<UInt32>.size
        // round 2: the words themselves (as floats: the collective moves their bits untouched)
        var all = [UInt32](repeating: 0, count: total)
        try words.withUnsafeBufferPointer { send in
            try all.withUnsafeMutableBufferPointer { recv in
                try send.withMemoryRebound(to: Float.self) { s in
                    try recv.withMemoryRebound(to: Float.self) { r in try collective.allGather(s, into: r, counts: counts) }
                }
            }
        }
        var starts: [Int] = [], at = 0
        for c in counts { starts.append(at); at += c }
        if let r = heads.firstIndex(where: { $0 & failedBit != 0 }) {
            var cursor = starts[r]
            let text: [UInt8] = Self.unpack(all, at: &cursor)
            throw JobError.rankFailed(rank: r, size: size, message: String(decoding: text, as: UTF8.self))
        }
        var cursors = starts
        return (0..<count).map { i in Self.unpack(all, at: &cursors[owner(ofChunk: i, key: key)]) }
    }

    /// `job(0..<n)`: in order on this thread, stopping at the first failure (the results end
    /// there), or with `workers` of two or more threads on them, each taking the next unclaimed
    /// index, BLAS single-threaded meanwhile; every index then has its result.
    static func run<T>(_ n: Int, workers: Workers?, _ job: (Int) throws -> T) throws -> [Result<T, Error>] {
        let T = min(workers?.threads ?? 1, n)
        guard T >= 2, let workers else {
            var out: [Result<T, Error>] = []
            for i in 0..<n {
                out.append(Result { try job(i) })
                if case .failure = out.last! { break }
            }
            return out
        }
        let slots = UnsafeMutablePointer<Result<T, Error>?>.allocate(capacity: n)
        slots.initialize(repeating: nil, count: n)
        defer { slots.deinitialize(count: n); slots.deallocate() }
        let claim = NSLock()
        var next = 0
        let blasThreads = SingleThreadedBLAS.begin()
        defer { SingleThreadedBLAS.end(blasThreads) }
        withoutActuallyEscaping(job) { job in
            DispatchQueue.concurrentPerform(iterations: T) { t in
                workers.bind(t) {
                    while true {
                        claim.lock()
                        let i = next
                        next += 1
                        claim.unlock()
                        guard i < n else { return }
                        slots[i] = Result { try job(i) }
                    }
                }
            }
        }
        return (0..<n).map { slots[$0]! }
    }

    /// Every rank's tally, in rank order (a collective call).
    public func gatherTallies() throws -> [Tally] {
        let own = tally
        let chunks = try collective.allGather(UInt64(own.chunks)), rows = try collective.allGather(UInt64(own.rows))
        return (0..<collective.size).map {
            Tally(chunks: Int(chunks[$0]), rows: Int(rows[$0]), totalChunks: own.totalChunks, totalRows: own.totalRows, passes: own.passes)
        }
    }

    /// `map` over slices of `sequences` cut into canonical chunks (`inferenceChunk` rows).
    public func map<T: BitwiseCopyable>(chunksOf sequences: [[Int32]], workers: Workers? = nil, _ body: ([[Int32]]) throws -> [T]) throws -> [[T]] {
        let parts = sequences.chunks()
        return try map(parts.count, rows: { parts[$0].count }, key: key(of: parts.first.map(Array.init)), workers: workers) { try body(Array(parts[$0])) }
    }

    static func pack<T: BitwiseCopyable>(_ values: [T], into words: inout [UInt32]) {
        let bytes = values.count * MemoryLayout<T>.stride
        words.append(UInt32(values.count))
        let start = words.count
        words.append(contentsOf: repeatElement(0, count: (bytes + 3) / 4))
        words.withUnsafeMutableBytes { w in
            values.withUnsafeBytes { v in
                if let src = v.baseAddress, bytes > 0 { (w.baseAddress! + start * 4).copyMemory(from: src, byteCount: bytes) }
            }
        }
    }

    static func unpack<T: BitwiseCopyable>(_ words: [UInt32], at cursor: inout Int) -> [T] {
        let n = Int(words[cursor]), bytes = n * MemoryLayout<T>.stride
        cursor += 1
        var out = [T]()
        out.reserveCapacity(n)
        words.withUnsafeBytes { w in
            let base = w.baseAddress! + cursor * 4
            for k in 0..<n { out.append(base.loadUnaligned(fromByteOffset: k * MemoryLayout<T>.stride, as: T.self)) }
        }
        cursor += (bytes + 3) / 4
        return out
    }
}
