// Replay storage shared by every method: the stored item and its exact byte accounting, a
// checkpointable random generator, the ledger, the `ReplayBuffer` protocol and the plain reservoir
// buffer used by LoRA+replay and DER. The dual-stream buffer lives in DualStreamBuffer.swift.
import Foundation

// MARK: - Stored item

/// One replayed example. All methods are compared under the same byte budget, so `byteSize` is the
/// exact accounting unit of every buffer:
///
///     byteSize = 4·tokenIds.count + 4 (label) + 4 (domain)
///              + 4·logits.count + 4·target.count + 16 (fixed per-item overhead)
///
/// The 16-byte overhead stands for the bookkeeping a compact store needs per item (an offset and a
/// length into a token arena, 8 bytes each); it is charged to every method alike, so it only makes
/// many tiny items cost what they would really cost.
public struct ReplayItem: Codable, Equatable, Sendable {
    /// WordPiece ids of the text, already tokenized (no padding).
    public var tokenIds: [Int32]
    /// Global class id; -1 for general text.
    public var label: Int32
    /// Index of the domain in the scenario; -1 for general text.
    public var domain: Int32
    /// DER: the logits over the domain's class range, stored when the item entered the buffer.
    public var logits: [Float]?
    /// An anchoring target, e.g. the pooled output (384 floats for MiniLM).
    public var target: [Float]?

    /// Fixed bytes charged per item on top of its arrays (see the type's comment).
    public static let overheadBytes = 16

    public init(tokenIds: [Int32], label: Int32, domain: Int32, logits: [Float]? = nil, target: [Float]? = nil) {
        self.tokenIds = tokenIds
        self.label = label
        self.domain = domain
        self.logits = logits
        self.target = target
    }

    /// A general-text item (label -1, domain -1), usually carrying an anchoring target.
    public static func general(tokenIds: [Int32], target: [Float]?) -> ReplayItem {
        ReplayItem(tokenIds: tokenIds, label: -1, domain: -1, logits: nil, target: target)
    }

    public var isGeneral: Bool { label < 0 }

    public var byteSize: Int {
        4 * tokenIds.count + 4 + 4 + 4 * (logits?.count ?? 0) + 4 * (target?.count ?? 0) + ReplayItem.overheadBytes
    }

    // Float arrays are stored as base64 of their little-endian bit patterns, so a checkpoint restores
    // them bit for bit (NaN and -0 included) and stays compact.
    private enum CodingKeys: String, CodingKey { case tokenIds, label, domain, logits, target }

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        tokenIds = try c.decode([Int32].self, forKey: .tokenIds)
        label = try c.decode(Int32.self, forKey: .label)
        domain = try c.decode(Int32.self, forKey: .domain)
        logits = try c.decodeIfPresent(String.self, forKey: .logits).map { try ReplayItem.floats(base64: $0, key: .logits, in: c) }
        target = try c.decodeIfPresent(String.self, forKey: .target).map { try ReplayItem.floats(base64: $0, key: .target, in: c) }
    }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(tokenIds, forKey: .tokenIds)
        try c.encode(label, forKey: .label)
        try c.encode(domain, forKey: .domain)
        try c.encodeIfPresent(logits.map(ReplayItem.base64), forKey: .logits)
        try c.encodeIfPresent(target.map(ReplayItem.base64), forKey: .target)
    }

    private static func base64(_ values: [Float]) -> String {
        var bytes = [UInt8]()
        bytes.reserveCapacity(values.count * 4)
        for v in values {
            let bits = v.bitPattern.littleEndian
            bytes.append(UInt8(truncatingIfNeeded: bits))
            bytes.append(UInt8(truncatingIfNeeded: bits >> 8))
            bytes.append(UInt8(truncatingIfNeeded: bits >> 16))
            bytes.append(UInt8(truncatingIfNeeded: bits >> 24))
        }
        return Data(bytes).base64EncodedString()
    }

    private static func floats(base64 text: String, key: CodingKeys, in c: KeyedDecodingContainer<CodingKeys>) throws -> [Float] {
        guard let data = Data(base64Encoded: text), data.count % 4 == 0 else {
            throw DecodingError.dataCorruptedError(forKey: key, in: c, debugDescription: "not base64 of little-endian Float32 values")
        }
        let bytes = [UInt8](data)
        var out = [Float]()
        out.reserveCapacity(bytes.count / 4)
        var i = 0
        while i < bytes.count {
            let bits = UInt32(bytes[i]) | UInt32(bytes[i + 1]) << 8 | UInt32(bytes[i + 2]) << 16 | UInt32(bytes[i + 3]) << 24
            out.append(Float(bitPattern: bits))
            i += 4
        }
        return out
    }
}

// MARK: - Ledger

/// What a replay buffer held after each domain: enough to audit that every method stayed inside the
/// same byte budget and to see how Dual-Replay moved its quotas.
public struct ReplayLedger: Codable, Equatable, Sendable {
    public struct DomainRow: Codable, Equatable, Sendable {
        public var domain: Int32
        public var items: Int
        public var bytes: Int
        /// Number of distinct labels the domain still has in the buffer.
        public var labels: Int
        /// Dual-stream only: the domain's byte quota.
        public var quota: Int?
        /// Dual-stream only: the importance weight that set the quota (weights sum to 1).
        public var importanceWeight: Double?
        /// Dual-stream only: the probability of drawing this domain in `sample(count:rng:)`.
        public var samplingWeight: Double?
        /// Dual-stream only: the smoothed (EMA) forgetting signal; nil before any was observed.
        public var forgetting: Double?
        /// Dual-stream only: the last raw forgetting value passed in.
        public var lastForgetting: Double?
        /// Dual-stream only: the quota floor, max(floorBytes, largest item of the domain).
        public var floor: Int?
    }

    public struct Entry: Codable, Equatable, Sendable {
        /// 0-based: the entry appended after the first domain is step 0.
        public var step: Int
        /// The domain that was just added, when known.
        public var newDomain: Int32?
        public var byteBudget: Int
        public var domainBudget: Int?
        public var generalBudget: Int?
        public var domains: [DomainRow]
        public var generalItems: Int
        public var generalBytes: Int
        /// Domain plus general bytes; never above `byteBudget`.
        public var totalBytes: Int
    }

    public private(set) var entries: [Entry] = []

    public init() {}

    public mutating func append(_ entry: Entry) { entries.append(entry) }

    public var last: Entry? { entries.last }
}

// MARK: - Protocol and snapshots

public enum ReplayError: LocalizedError, Equatable {
    case invalidConfiguration(String)
    /// The per-domain floors do not fit: `domains` floors of up to `floorBytes` each exceed `domainBudget`.
    case budgetTooSmall(domains: Int, floorBytes: Int, domainBudget: Int)
    case inconsistentSnapshot(String)

    public var errorDescription: String? {
        switch self {
        case .invalidConfiguration(let why):
            return "invalid replay configuration: \(why)"
        case .budgetTooSmall(let domains, let floorBytes, let domainBudget):
            return "replay budget too small: \(domains) domains need floors of up to \(floorBytes) bytes each, "
                + "but the domain stream has only \(domainBudget) bytes; raise the byte budget or lower floorBytes"
        case .inconsistentSnapshot(let why):
            return "replay snapshot is inconsistent: \(why)"
        }
    }
}

/// What the training loop needs from any replay store. Implementations are deterministic given
/// their seed; sampling draws from the caller's generator so the buffer's own state only changes
/// when items are stored or evicted.
public protocol ReplayBuffer: AnyObject {
    var byteBudget: Int { get }
    /// Bytes held, by `ReplayItem.byteSize`; never above `byteBudget`.
    var bytesUsed: Int { get }
    /// Items held.
    var count: Int { get }
    var ledger: ReplayLedger { get }
    /// Up to `count` items for one replay batch.
    func sample<G: RandomNumberGenerator>(count: Int, rng: inout G) -> [ReplayItem]
    /// Items and bytes per domain (general text under -1).
    func occupancy() -> [Int32: (items: Int, bytes: Int)]
    /// Everything needed to continue bit for bit: items, generator state, ledger.
    func snapshot() -> ReplayBufferSnapshot
}

/// A checkpointable state of either buffer kind.
public enum ReplayBufferSnapshot: Codable, Equatable, Sendable {
    case reservoir(ReservoirBuffer.State)
    case dualStream(DualStreamBuffer.State)

    /// Rebuilds the buffer this snapshot was taken from.
    public func makeBuffer() throws -> any ReplayBuffer {
        switch self {
        case .reservoir(let state): return try ReservoirBuffer(state: state)
        case .dualStream(let state): return try DualStreamBuffer(state: state)
        }
    }
}

// MARK: - Reservoir buffer

/// Reservoir sampling under a byte budget (LoRA+replay, DER).
///
/// Items arrive one by one; `seen` counts them. An item that fits in the free bytes is stored. When
/// it does not fit, the buffer is full and the item is accepted with probability k/seen (k = items
/// held, classic reservoir "Algorithm R"); an accepted item evicts uniformly random items until it
/// fits. With equal-size items this is exactly Algorithm R, so every item seen so far is held with
/// the same probability. An item larger than the whole budget is counted in `rejectedTooLarge`.
public final class ReservoirBuffer: ReplayBuffer {
    public struct State: Codable, Equatable, Sendable {
        public var byteBudget: Int
        public var items: [ReplayItem]
        public var seen: Int
        public var rejectedTooLarge: Int
        public var rng: SplitMix64
        public var ledger: ReplayLedger
    }

    public let byteBudget: Int
    public private(set) var items: [ReplayItem] = []
    public private(set) var bytesUsed = 0
    /// Items offered so far (the n of reservoir sampling).
    public private(set) var seen = 0
    public private(set) var rejectedTooLarge = 0
    public private(set) var ledger = ReplayLedger()
    private var rng: SplitMix64

    public init(byteBudget: Int, seed: UInt64) {
        precondition(byteBudget >= 0, "byteBudget must be >= 0")
        self.byteBudget = byteBudget
        rng = SplitMix64(seed: seed)
    }

    public convenience init(state: State) throws {
        guard state.byteBudget >= 0 else { throw ReplayError.inconsistentSnapshot("negative byte budget") }
        let bytes = state.items.reduce(0) { $0 + $1.byteSize }
        guard bytes <= state.byteBudget else {
            throw ReplayError.inconsistentSnapshot("items hold \(bytes) bytes, above the budget of \(state.byteBudget)")
        }
        guard state.seen >= state.items.count, state.rejectedTooLarge >= 0 else {
            throw ReplayError.inconsistentSnapshot("seen (\(state.seen)) is below the item count (\(state.items.count))")
        }
        self.init(byteBudget: state.byteBudget, seed: 0)
        items = state.items
        bytesUsed = bytes
        seen = state.seen
        rejectedTooLarge = state.rejectedTooLarge
        rng = state.rng
        ledger = state.ledger
    }

    public var count: Int { items.count }

    /// Offers one item; returns whether it was stored.
    @discardableResult
    public func add(_ item: ReplayItem) -> Bool {
        seen += 1
        let size = item.byteSize
        guard size <= byteBudget else { rejectedTooLarge += 1; return false }
        if bytesUsed + size <= byteBudget {
            items.append(item)
            bytesUsed += size
            return true
        }
        // Full: keep the new item with probability k/seen.
        guard rng.stableIndex(below: seen) < items.count else { return false }
        while bytesUsed + size > byteBudget {
            let victim = rng.stableIndex(below: items.count)
            bytesUsed -= items[victim].byteSize
            items.swapAt(victim, items.count - 1)
            items.removeLast()
        }
        items.append(item)
        bytesUsed += size
        return true
    }

    /// The items of one domain, in item order.
    public func items(of domain: Int32) -> [ReplayItem] { items.filter { $0.domain == domain } }

    /// Replaces the stored logits of domain `domain`'s items (`items(of:)`), in item order, each
    /// with as many floats as before, so bytes and the ledger stay as they were.
    public func replaceLogits(of domain: Int32, with logits: [[Float]]) {
        let held = items.indices.filter { items[$0].domain == domain }
        precondition(logits.count == held.count, "replaceLogits: \(logits.count) rows for \(held.count) items")
        for (k, i) in held.enumerated() {
            precondition(items[i].logits?.count == logits[k].count,
                         "replaceLogits: \(logits[k].count) logits for an item that stores \(items[i].logits?.count ?? 0)")
            items[i].logits = logits[k]
        }
    }

    /// Offers items in order.
    public func add<S: Sequence>(items newItems: S) where S.Element == ReplayItem {
        for item in newItems { add(item) }
    }

    /// Up to `count` distinct items, uniformly without replacement, in random order.
    public func sample<G: RandomNumberGenerator>(count: Int, rng: inout G) -> [ReplayItem] {
        let k = min(max(count, 0), items.count)
        guard k > 0 else { return [] }
        var order = Array(0..<items.count)
        for i in 0..<k {
            let j = i + rng.stableIndex(below: order.count - i)
            order.swapAt(i, j)
        }
        return order[0..<k].map { items[$0] }
    }

    public func occupancy() -> [Int32: (items: Int, bytes: Int)] {
        var out: [Int32: (items: Int, bytes: Int)] = [:]
        for item in items {
            let old = out[item.domain] ?? (0, 0)
            out[item.domain] = (old.items + 1, old.bytes + item.byteSize)
        }
        return out
    }

    /// Appends a ledger entry (call after each domain). General items (domain -1) are reported in
    /// the general columns; quotas and weights stay nil since a reservoir has none.
    @discardableResult
    public func appendLedgerEntry(newDomain: Int32? = nil) -> ReplayLedger.Entry {
        var rows: [Int32: ReplayLedger.DomainRow] = [:]
        var labels: [Int32: Set<Int32>] = [:]
        var generalItems = 0, generalBytes = 0
        for item in items {
            if item.domain < 0 { generalItems += 1; generalBytes += item.byteSize; continue }
            var row = rows[item.domain] ?? ReplayLedger.DomainRow(domain: item.domain, items: 0, bytes: 0, labels: 0)
            row.items += 1
            row.bytes += item.byteSize
            rows[item.domain] = row
            labels[item.domain, default: []].insert(item.label)
        }
        let domainRows = rows.keys.sorted().map { d -> ReplayLedger.DomainRow in
            var row = rows[d]!
            row.labels = labels[d]?.count ?? 0
            return row
        }
        let entry = ReplayLedger.Entry(
            step: ledger.entries.count, newDomain: newDomain, byteBudget: byteBudget,
            domainBudget: nil, generalBudget: nil, domains: domainRows,
            generalItems: generalItems, generalBytes: generalBytes, totalBytes: bytesUsed)
        ledger.append(entry)
        return entry
    }

    public var state: State {
        State(byteBudget: byteBudget, items: items, seen: seen, rejectedTooLarge: rejectedTooLarge, rng: rng, ledger: ledger)
    }

    public func snapshot() -> ReplayBufferSnapshot { .reservoir(state) }
}
