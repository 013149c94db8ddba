// Dual-Replay's buffer: one byte budget split into a domain stream (labelled examples of every
// domain seen so far, with quotas steered by measured forgetting) and a general stream (general
// text with anchoring targets, kept by plain reservoir sampling).
import Foundation

/// Settings of a `DualStreamBuffer`. The weights and quotas they drive are described on the class.
public struct DualStreamConfig: Codable, Hashable, Sendable {
    /// Total bytes for both streams together, by `ReplayItem.byteSize`.
    public var byteBudget: Int
    /// Share of the budget for the domain stream; the general stream gets the rest.
    public var domainFraction: Double
    /// φ in the importance weights: the part of the domain budget shared equally by all domains.
    public var floorWeight: Double
    /// ψ in the sampling weights: the part of the replay draws shared equally by all domains.
    public var samplingFloorWeight: Double
    /// The smallest quota a domain may get. It is raised to the domain's largest item so that every
    /// domain can keep at least one item.
    public var floorBytes: Int
    /// α of the exponential moving average applied to the forgetting signals.
    public var forgettingEMA: Double
    /// When true, the newest domain may use bytes that older domains cannot (their quota is above
    /// what they still hold, and their training data is gone); it gives them back when the next
    /// domain arrives. This keeps the buffer as full as a reservoir under the same budget.
    public var newestDomainBorrowsSlack: Bool
    /// When true, a domain's quota is capped at what it can hold (the bytes it keeps; for the
    /// arriving domain, those plus its candidates): its data is gone, so bytes above that would
    /// stay empty. The difference goes to the other domains in proportion to their weights, so
    /// they are evicted less (see "Quotas" on the class). nil or false: quotas ignore what a
    /// domain holds (the behaviour before the option existed; absent from older states).
    public var redistributeUnused: Bool?
    public var seed: UInt64

    public init(byteBudget: Int, domainFraction: Double = 0.7, floorWeight: Double = 0.2,
                samplingFloorWeight: Double = 0.2, floorBytes: Int = 0, forgettingEMA: Double = 0.5,
                newestDomainBorrowsSlack: Bool = true, redistributeUnused: Bool? = nil, seed: UInt64 = 0) {
        self.byteBudget = byteBudget
        self.domainFraction = domainFraction
        self.floorWeight = floorWeight
        self.samplingFloorWeight = samplingFloorWeight
        self.floorBytes = floorBytes
        self.forgettingEMA = forgettingEMA
        self.newestDomainBorrowsSlack = newestDomainBorrowsSlack
        self.redistributeUnused = redistributeUnused
        self.seed = seed
    }

    /// ⌊byteBudget · domainFraction⌋ bytes for labelled domain examples (a 1e-6 tolerance keeps
    /// e.g. 10 · 0.7 at 7, not 6, despite binary rounding).
    public var domainBudget: Int {
        min(byteBudget, max(0, Int((Double(byteBudget) * domainFraction + 1e-6).rounded(.down))))
    }
    /// The rest, for general text: domainBudget + generalBudget == byteBudget.
    public var generalBudget: Int { byteBudget - domainBudget }

    public func validate() throws {
        func unit(_ x: Double) -> Bool { x.isFinite && x >= 0 && x <= 1 }
        if byteBudget < 0 { throw ReplayError.invalidConfiguration("byteBudget must be >= 0, got \(byteBudget)") }
        if !unit(domainFraction) { throw ReplayError.invalidConfiguration("domainFraction must be in [0, 1], got \(domainFraction)") }
        if !unit(floorWeight) { throw ReplayError.invalidConfiguration("floorWeight must be in [0, 1], got \(floorWeight)") }
        if !unit(samplingFloorWeight) {
            throw ReplayError.invalidConfiguration("samplingFloorWeight must be in [0, 1], got \(samplingFloorWeight)")
        }
        if floorBytes < 0 { throw ReplayError.invalidConfiguration("floorBytes must be >= 0, got \(floorBytes)") }
        if !(forgettingEMA > 0 && forgettingEMA <= 1) {
            throw ReplayError.invalidConfiguration("forgettingEMA (alpha) must be in (0, 1], got \(forgettingEMA)")
        }
    }
}

/// The dual-stream replay buffer.
///
/// **Forgetting signal.** After each domain the caller measures forgetting on validation data (for
/// example best-so-far val F1 minus current val F1) and passes `[domain: Float]`. Each domain keeps
/// an exponential moving average, `ema_d ← α·f_d + (1−α)·ema_d` (the first value is taken as is), so a
/// noisy validation score does not make quotas thrash. A domain never measured yet (the one being
/// added) uses the mean EMA of the measured domains as its prior, or 0 when none was measured.
///
/// **Importance weights** (D domains, φ = `floorWeight`, f̄_d = max(0, ema_d)):
///
///     w_d = φ/D + (1−φ) · f̄_d / Σ_k f̄_k        (the second term is 1/D when Σ f̄ = 0)
///
/// so Σ w_d = 1 and no weight is below φ/D.
///
/// **Quotas** (B = domain budget, floor_d = max(floorBytes, largest item of d)): water-filling,
/// `quota_d = max(floor_d, w_d · B')` where B' is what is left after the floored domains, i.e.
/// repeat { domains whose proportional share w_d/W_free · (B − Σ_fixed floor) is below floor_d are
/// fixed at floor_d } until none moves; the others get ⌊share⌋. Hence Σ quota_d ≤ B always, every
/// quota ≥ its floor, and with equal floors a larger weight never gets a smaller quota. If the
/// floors alone do not fit, `addDomain` throws `ReplayError.budgetTooSmall` and changes nothing.
/// With `redistributeUnused`, each quota is also capped at what its domain can hold (`cappedFill`):
/// a small domain whose whole training set is below its share keeps its quota at its bytes, and
/// the rest of its share goes to the domains that still hold more than theirs.
///
/// **Eviction.** Quotas are enforced when a domain arrives: every older domain above its quota
/// evicts class-balanced (always from its most represented label, a random item of it), so every
/// intent keeps examples as long as the quota allows. A domain is filled to within one item of its
/// quota, and since quota ≥ its largest item, it always keeps at least one item. The new domain is
/// reduced the same way to its quota, or, with `newestDomainBorrowsSlack`, to whatever the domain
/// stream has left.
///
/// **Sampling.** Old domains' quotas cannot grow back (their data is gone), so importance also
/// sets how often a domain is replayed. `sample(count:rng:)` draws each item's domain with
/// probability s_d, then an item of it uniformly (without replacement within a batch while the
/// domain has enough items):
///
///     s_d = ψ/D' + (1−ψ) · f̄_d / Σ_k f̄_k        over the D' domains holding items (ψ = samplingFloorWeight)
///
/// **General stream**: a `ReservoirBuffer` with the general budget (`addGeneral`, `sampleGeneral`).
public final class DualStreamBuffer: ReplayBuffer {
    /// One domain's part of the domain stream.
    public struct DomainStream: Codable, Equatable, Sendable {
        public var domain: Int32
        public var items: [ReplayItem]
        /// Largest item ever offered for this domain (sets its floor).
        public var largestItemBytes: Int
        public var forgettingEMA: Double?
        public var lastForgetting: Double?
        public var importanceWeight: Double
        public var samplingWeight: Double
        public var quota: Int

        public var bytes: Int { items.reduce(0) { $0 + $1.byteSize } }
    }

    public struct State: Codable, Equatable, Sendable {
        public var config: DualStreamConfig
        public var domains: [DomainStream]
        public var general: ReservoirBuffer.State
        public var rng: SplitMix64
        public var ledger: ReplayLedger
    }

    public let config: DualStreamConfig
    /// Domains in arrival order; every loop below walks this array, never a dictionary, so results
    /// do not depend on hashing.
    private var slots: [DomainStream] = []
    private var slotIndex: [Int32: Int] = [:]
    private var general: ReservoirBuffer
    private var rng: SplitMix64
    public private(set) var ledger = ReplayLedger()

    public init(config: DualStreamConfig) throws {
        try config.validate()
        self.config = config
        general = ReservoirBuffer(byteBudget: config.generalBudget, seed: SplitMix64.mix(config.seed ^ 0x6765_6E65_7261_6C21))
        rng = SplitMix64(seed: config.seed, stream: 0)
    }

    public convenience init(state: State) throws {
        try self.init(config: state.config)
        var seen = Set<Int32>()
        var domainBytes = 0
        for slot in state.domains {
            guard slot.domain >= 0, seen.insert(slot.domain).inserted else {
                throw ReplayError.inconsistentSnapshot("domain \(slot.domain) is negative or appears twice")
            }
            guard slot.items.allSatisfy({ $0.domain == slot.domain && $0.label >= 0 }) else {
                throw ReplayError.inconsistentSnapshot("domain \(slot.domain) holds items of another domain or general text")
            }
            domainBytes += slot.bytes
        }
        guard domainBytes <= state.config.domainBudget else {
            throw ReplayError.inconsistentSnapshot("domain stream holds \(domainBytes) bytes, above its budget of \(state.config.domainBudget)")
        }
        guard state.general.byteBudget == state.config.generalBudget else {
            throw ReplayError.inconsistentSnapshot("general stream budget \(state.general.byteBudget) differs from the configuration's \(state.config.generalBudget)")
        }
        general = try ReservoirBuffer(state: state.general)
        slots = state.domains
        for (i, slot) in slots.enumerated() { slotIndex[slot.domain] = i }
        rng = state.rng
        ledger = state.ledger
    }

    // MARK: Accounting

    public var byteBudget: Int { config.byteBudget }
    public var domainBudget: Int { config.domainBudget }
    public var generalBudget: Int { config.generalBudget }
    public var domainBytesUsed: Int { slots.reduce(0) { $0 + $1.bytes } }
    public var generalBytesUsed: Int { general.bytesUsed }
    public var bytesUsed: Int { domainBytesUsed + generalBytesUsed }
    public var count: Int { slots.reduce(0) { $0 + $1.items.count } + general.count }
    public var generalCount: Int { general.count }
    public var generalItems: [ReplayItem] { general.items }

    /// Domains in arrival order.
    public var domains: [Int32] { slots.map(\.domain) }
    public func items(of domain: Int32) -> [ReplayItem] { slot(domain)?.items ?? [] }
    public func quota(of domain: Int32) -> Int? { slot(domain)?.quota }
    public func importanceWeight(of domain: Int32) -> Double? { slot(domain)?.importanceWeight }
    public func samplingWeight(of domain: Int32) -> Double? { slot(domain)?.samplingWeight }
    /// The smoothed forgetting signal; nil before any was observed.
    public func forgettingSignal(of domain: Int32) -> Double? { slot(domain)?.forgettingEMA }
    /// The quota floor: max(floorBytes, largest item of the domain).
    public func floorBytes(of domain: Int32) -> Int? { slot(domain).map(floor(of:)) }

    /// Items and bytes per domain; the general stream is reported under -1 when it holds anything.
    public func occupancy() -> [Int32: (items: Int, bytes: Int)] {
        var out: [Int32: (items: Int, bytes: Int)] = [:]
        for slot in slots { out[slot.domain] = (slot.items.count, slot.bytes) }
        if general.count > 0 { out[-1] = (general.count, general.bytesUsed) }
        return out
    }

    private func slot(_ domain: Int32) -> DomainStream? { slotIndex[domain].map { slots[$0] } }

    /// Replaces the stored logits of `domain`'s items, in `items(of:)` order (after its head was
    /// refitted: distillation must target the head that is kept). Only items that store logits
    /// change, each to as many floats as before, so bytes, quotas and the ledger stay as they were.
    public func replaceLogits(of domain: Int32, with logits: [[Float]]) {
        guard let i = slotIndex[domain] else { return }
        precondition(logits.count == slots[i].items.count, "replaceLogits: \(logits.count) rows for \(slots[i].items.count) items")
        for k in slots[i].items.indices {
            guard let old = slots[i].items[k].logits else { continue }
            precondition(old.count == logits[k].count, "replaceLogits: \(logits[k].count) logits for an item that stores \(old.count)")
            slots[i].items[k].logits = logits[k]
        }
    }

    private func floor(of slot: DomainStream) -> Int { max(config.floorBytes, slot.largestItemBytes) }

    // MARK: Updates

    /// Folds new forgetting measurements into each domain's EMA and recomputes weights and quotas.
    /// Nothing is evicted here: quotas are enforced when the next domain arrives. Unknown domains and
    /// non-finite values are ignored.
    public func updateForgetting(_ forgetting: [Int32: Float]) {
        let alpha = config.forgettingEMA
        for i in slots.indices {
            guard let value = forgetting[slots[i].domain], value.isFinite else { continue }
            let v = Double(value)
            slots[i].lastForgetting = v
            slots[i].forgettingEMA = slots[i].forgettingEMA.map { alpha * v + (1 - alpha) * $0 } ?? v
        }
        recomputeWeightsAndQuotas()
        recomputeSamplingWeights()
    }

    /// Adds a domain's items (typically a class-balanced candidate set from its training data), after
    /// first folding in `forgetting` for the domains already held. Recomputes quotas, evicts older
    /// domains down to theirs, keeps as many of the new items as the rules allow and appends a ledger
    /// entry. Calling it again for a domain already held merges the new items with the old ones.
    /// Throws `budgetTooSmall`, changing nothing, if the per-domain floors cannot all fit.
    public func addDomain(_ domain: Int32, items newItems: [ReplayItem], forgetting: [Int32: Float] = [:]) throws {
        precondition(domain >= 0, "addDomain: domain ids are >= 0 (general text goes to addGeneral)")
        precondition(newItems.allSatisfy { $0.domain == domain && $0.label >= 0 },
                     "addDomain: every item must belong to domain \(domain) and carry a class label")

        // Check the floors before changing anything.
        let newLargest = newItems.map(\.byteSize).max() ?? 0
        var floors = slots.map { slot -> Int in
            slot.domain == domain ? max(config.floorBytes, max(slot.largestItemBytes, newLargest)) : floor(of: slot)
        }
        if slotIndex[domain] == nil { floors.append(max(config.floorBytes, newLargest)) }
        let floorSum = floors.reduce(0, +)
        if floorSum > config.domainBudget {
            throw ReplayError.budgetTooSmall(domains: floors.count, floorBytes: floors.max() ?? 0, domainBudget: config.domainBudget)
        }

        updateForgetting(forgetting)
        let index: Int
        if let existing = slotIndex[domain] {
            index = existing
        } else {
            index = slots.count
            slots.append(DomainStream(domain: domain, items: [], largestItemBytes: 0, forgettingEMA: nil, lastForgetting: nil,
                                    importanceWeight: 0, samplingWeight: 0, quota: 0))
            slotIndex[domain] = index
        }
        slots[index].largestItemBytes = max(slots[index].largestItemBytes, newLargest)
        recomputeWeightsAndQuotas(arriving: index, arrivingBytes: newItems.reduce(0) { $0 + $1.byteSize })

        for i in slots.indices where i != index {
            slots[i].items = evictClassBalanced(slots[i].items, toFit: slots[i].quota)
        }
        let othersBytes = slots.indices.reduce(0) { $1 == index ? $0 : $0 + slots[$1].bytes }
        let cap = config.newestDomainBorrowsSlack ? config.domainBudget - othersBytes : slots[index].quota
        slots[index].items = evictClassBalanced(slots[index].items + newItems, toFit: cap)

        recomputeSamplingWeights()
        appendLedgerEntry(newDomain: domain)
    }

    /// Offers general-text items (label -1) to the general stream's reservoir.
    public func addGeneral(items newItems: [ReplayItem]) {
        precondition(newItems.allSatisfy(\.isGeneral), "addGeneral: general items carry label -1")
        general.add(items: newItems)
    }

    // MARK: Sampling

    /// `count` domain-stream items: each draw picks a domain with probability `samplingWeight`, then
    /// an item of it uniformly (distinct within the batch while the domain has enough). Random order.
    public func sample<G: RandomNumberGenerator>(count: Int, rng: inout G) -> [ReplayItem] {
        let active = slots.indices.filter { !slots[$0].items.isEmpty && slots[$0].samplingWeight > 0 }
        guard count > 0, !active.isEmpty else { return [] }
        let total = active.reduce(0.0) { $0 + slots[$1].samplingWeight }
        var draws = [Int](repeating: 0, count: active.count)
        for _ in 0..<count {
            let u = rng.stableUnit() * total
            var acc = 0.0
            var pick = active.count - 1
            for (k, i) in active.enumerated() {
                acc += slots[i].samplingWeight
                if u < acc { pick = k; break }
            }
            draws[pick] += 1
        }
        var out: [ReplayItem] = []
        out.reserveCapacity(count)
        for (k, i) in active.enumerated() where draws[k] > 0 {
            let pool = slots[i].items
            var need = draws[k]
            while need > 0 {
                let take = min(need, pool.count)
                var order = Array(pool.indices)
                for m in 0..<take { order.swapAt(m, m + rng.stableIndex(below: pool.count - m)) }
                for m in 0..<take { out.append(pool[order[m]]) }
                need -= take
            }
        }
        out.stableShuffle(using: &rng)
        return out
    }

    /// Up to `count` general-text items, uniformly without replacement.
    public func sampleGeneral<G: RandomNumberGenerator>(count: Int, rng: inout G) -> [ReplayItem] {
        general.sample(count: count, rng: &rng)
    }

    // MARK: Snapshots

    public var state: State {
        State(config: config, domains: slots, general: general.state, rng: rng, ledger: ledger)
    }

    public func snapshot() -> ReplayBufferSnapshot { .dualStream(state) }

    // MARK: Internals

    /// f̄_d = max(0, ema_d), with the mean of the measured domains as prior for unmeasured ones.
    private func forgettingValues(_ indices: [Int]) -> [Double] {
        let measured = slots.compactMap(\.forgettingEMA).map { max(0, $0) }
        let prior = measured.isEmpty ? 0 : measured.reduce(0, +) / Double(measured.count)
        return indices.map { max(0, slots[$0].forgettingEMA ?? prior) }
    }

    /// floor/n + (1 − floor) · f/Σf, or uniform when Σf = 0.
    private static func flooredWeights(_ f: [Double], floor: Double) -> [Double] {
        let n = Double(f.count)
        let sum = f.reduce(0, +)
        return f.map { floor / n + (1 - floor) * (sum > 0 ? $0 / sum : 1 / n) }
    }

    /// `arriving`: the slot of the domain being added, whose `arrivingBytes` of candidates count
    /// towards what it can hold (`redistributeUnused`).
    private func recomputeWeightsAndQuotas(arriving: Int? = nil, arrivingBytes: Int = 0) {
        guard !slots.isEmpty else { return }
        let weights = DualStreamBuffer.flooredWeights(forgettingValues(Array(slots.indices)), floor: config.floorWeight)
        let floors = slots.map(floor(of:))
        let quotas: [Int]
        if config.redistributeUnused ?? false {
            let caps = slots.indices.map { slots[$0].bytes + ($0 == arriving ? arrivingBytes : 0) }
            quotas = DualStreamBuffer.cappedFill(weights: weights, floors: floors, caps: caps, budget: config.domainBudget)
        } else {
            quotas = DualStreamBuffer.waterFill(weights: weights, floors: floors, budget: config.domainBudget)
        }
        for i in slots.indices {
            slots[i].importanceWeight = weights[i]
            slots[i].quota = quotas[i]
        }
    }

    private func recomputeSamplingWeights() {
        let active = slots.indices.filter { !slots[$0].items.isEmpty }
        for i in slots.indices { slots[i].samplingWeight = 0 }
        guard !active.isEmpty else { return }
        let weights = DualStreamBuffer.flooredWeights(forgettingValues(active), floor: config.samplingFloorWeight)
        for (k, i) in active.enumerated() { slots[i].samplingWeight = weights[k] }
    }

    /// Quotas ∝ weights with per-domain floors; Σ ≤ budget whenever Σ floors ≤ budget.
    static func waterFill(weights: [Double], floors: [Int], budget: Int) -> [Int] {
        let n = weights.count
        var fixed = [Bool](repeating: false, count: n)
        var shares = [Double](repeating: 0, count: n)
        while true {
            let remaining = Double(budget - (0..<n).reduce(0) { fixed[$1] ? $0 + floors[$1] : $0 })
            let free = (0..<n).filter { !fixed[$0] }
            if free.isEmpty { break }
            let freeWeight = free.reduce(0.0) { $0 + weights[$1] }
            var moved = false
            for i in free {
                shares[i] = freeWeight > 0 ? weights[i] / freeWeight * remaining : remaining / Double(free.count)
                if shares[i] < Double(floors[i]) { fixed[i] = true; moved = true }
            }
            if !moved { break }
        }
        return (0..<n).map { fixed[$0] ? floors[$0] : max(floors[$0], Int(shares[$0].rounded(.down))) }
    }

    /// Quotas ∝ weights between per-domain floors and caps: quota_d = ⌊clamp(λ·w_d, floor_d,
    /// max(cap_d, floor_d))⌋ with the largest λ for which Σ quota_d ≤ budget (every domain at its
    /// cap when even that fits). A cap above a domain's share changes nothing; a cap below it
    /// frees bytes, which raise λ for the others. Σ ≤ budget whenever Σ floors ≤ budget.
    static func cappedFill(weights w: [Double], floors: [Int], caps: [Int], budget: Int) -> [Int] {
        let n = w.count
        let hiCap = (0..<n).map { Double(max(caps[$0], floors[$0])) }
        func fill(_ lambda: Double) -> [Double] { (0..<n).map { min(max(lambda * w[$0], Double(floors[$0])), hiCap[$0]) } }
        func total(_ x: [Double]) -> Double { x.reduce(0) { $0 + $1.rounded(.down) } }
        // every domain with a positive weight at its cap (a zero weight stays at its floor)
        let atCaps = (0..<n).map { w[$0] > 0 ? Int(hiCap[$0]) : floors[$0] }
        if atCaps.reduce(0, +) <= budget { return atCaps }
        // ... which λ = max cap/weight reaches; the largest λ that fits lies below it
        var hi = (0..<n).filter { w[$0] > 0 }.map { hiCap[$0] / w[$0] }.max() ?? 0
        var lo = 0.0
        for _ in 0..<200 {
            let mid = (lo + hi) / 2
            if mid <= lo || mid >= hi { break }
            if total(fill(mid)) <= Double(budget) { lo = mid } else { hi = mid }
        }
        return fill(lo).map { Int($0) }
    }

    /// Removes items, always from the label with the most items (ties: more bytes, then the smaller
    /// label), a random one of it, until the items fit in `cap` bytes. Survivors keep their order.
    private func evictClassBalanced(_ items: [ReplayItem], toFit cap: Int) -> [ReplayItem] {
        var bytes = items.reduce(0) { $0 + $1.byteSize }
        guard bytes > cap else { return items }
        let labels = Array(Set(items.map(\.label))).sorted()
        var position: [Int32: Int] = [:]
        for (p, label) in labels.enumerated() { position[label] = p }
        var pools = [[Int]](repeating: [], count: labels.count)
        var poolBytes = [Int](repeating: 0, count: labels.count)
        for (i, item) in items.enumerated() {
            let p = position[item.label]!
            pools[p].append(i)
            poolBytes[p] += item.byteSize
        }
        for p in pools.indices { pools[p].stableShuffle(using: &rng) }
        var removed = [Bool](repeating: false, count: items.count)
        while bytes > cap {
            var best = -1
            for p in pools.indices where !pools[p].isEmpty {
                if best < 0 || pools[p].count > pools[best].count
                    || (pools[p].count == pools[best].count && poolBytes[p] > poolBytes[best]) {
                    best = p
                }
            }
            guard best >= 0 else { break }
            let victim = pools[best].removeLast()
            removed[victim] = true
            bytes -= items[victim].byteSize
            poolBytes[best] -= items[victim].byteSize
        }
        return items.indices.filter { !removed[$0] }.map { items[$0] }
    }

    private func appendLedgerEntry(newDomain: Int32) {
        let rows = slots.map { slot in
            ReplayLedger.DomainRow(
                domain: slot.domain, items: slot.items.count, bytes: slot.bytes,
                labels: Set(slot.items.map(\.label)).count, quota: slot.quota,
                importanceWeight: slot.importanceWeight, samplingWeight: slot.samplingWeight,
                forgetting: slot.forgettingEMA, lastForgetting: slot.lastForgetting, floor: floor(of: slot))
        }
        ledger.append(ReplayLedger.Entry(
            step: ledger.entries.count, newDomain: newDomain, byteBudget: config.byteBudget,
            domainBudget: config.domainBudget, generalBudget: config.generalBudget, domains: rows,
            generalItems: general.count, generalBytes: general.bytesUsed, totalBytes: bytesUsed))
    }
}
