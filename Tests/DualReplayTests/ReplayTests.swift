import Foundation
import Testing
@testable import DualReplay

/// Items of one domain: `labels` classes (global ids domain*100 + l), `perLabel` each, `tokens` ids long.
private func domainItems(_ domain: Int32, labels: Int, perLabel: Int, tokens: Int = 12, target: Int = 0,
                         rng: inout SeededRandom) -> [ReplayItem] {
    var out: [ReplayItem] = []
    for i in 0..<perLabel {
        for l in 0..<labels {
            let ids = (0..<tokens).map { Int32(($0 * 31 + i * 7 + l) % 30522) }
            out.append(ReplayItem(tokenIds: ids, label: domain * 100 + Int32(l), domain: domain,
                                  logits: nil, target: target > 0 ? rng.floats(target) : nil))
        }
    }
    return out
}

private func generalItems(_ n: Int, target: Int, rng: inout SeededRandom) -> [ReplayItem] {
    (0..<n).map { i in ReplayItem.general(tokenIds: (0..<10).map { Int32($0 + i) }, target: rng.floats(target)) }
}

/// The invariants every dual-stream operation must keep.
private func checkInvariants(_ buffer: DualStreamBuffer, sourceLocation: SourceLocation = #_sourceLocation) {
    #expect(buffer.bytesUsed <= buffer.byteBudget, sourceLocation: sourceLocation)
    #expect(buffer.domainBytesUsed <= buffer.domainBudget, sourceLocation: sourceLocation)
    #expect(buffer.generalBytesUsed <= buffer.generalBudget, sourceLocation: sourceLocation)
    #expect(buffer.domainBudget + buffer.generalBudget == buffer.byteBudget, sourceLocation: sourceLocation)
    let quotas = buffer.domains.compactMap { buffer.quota(of: $0) }
    #expect(quotas.reduce(0, +) <= buffer.domainBudget, sourceLocation: sourceLocation)
    let occupancy = buffer.occupancy()
    #expect(occupancy.values.reduce(0) { $0 + $1.bytes } == buffer.bytesUsed, sourceLocation: sourceLocation)
    for d in buffer.domains {
        let items = buffer.items(of: d)
        #expect(items.reduce(0) { $0 + $1.byteSize } == occupancy[d]?.bytes, sourceLocation: sourceLocation)
        #expect(buffer.quota(of: d)! >= buffer.floorBytes(of: d)!, sourceLocation: sourceLocation)
        let weights = buffer.domains.compactMap { buffer.importanceWeight(of: $0) }
        #expect(abs(weights.reduce(0, +) - 1) < 1e-9, sourceLocation: sourceLocation)
    }
    if let entry = buffer.ledger.last { #expect(entry.totalBytes <= entry.byteBudget, sourceLocation: sourceLocation) }
}

@Suite("ReplayTests")
struct ReplayTests {
    @Test func itemByteSizeIsExact() {
        let item = ReplayItem(tokenIds: Array(repeating: 7, count: 10), label: 3, domain: 0,
                              logits: Array(repeating: 0.5, count: 5), target: Array(repeating: 1, count: 384))
        #expect(item.byteSize == 4 * 10 + 4 + 4 + 4 * 5 + 4 * 384 + 16)
        #expect(ReplayItem(tokenIds: [], label: 0, domain: 0).byteSize == 24)
        #expect(ReplayItem.overheadBytes == 16)
    }

    @Test func itemCodableIsBitExact() throws {
        var rng = SeededRandom(seed: 1)
        let item = ReplayItem(tokenIds: [101, 2023, 102], label: 5, domain: 1,
                              logits: [.nan, -0.0, .infinity, 1e-38, 3.25], target: rng.floats(384))
        let back = try JSONDecoder().decode(ReplayItem.self, from: JSONEncoder().encode(item))
        #expect(back.tokenIds == item.tokenIds && back.label == 5 && back.domain == 1)
        #expect(back.logits!.map(\.bitPattern) == item.logits!.map(\.bitPattern))
        #expect(back.target! == item.target!)
        let plain = ReplayItem(tokenIds: [1], label: 0, domain: 0)
        #expect(try JSONDecoder().decode(ReplayItem.self, from: JSONEncoder().encode(plain)) == plain)
    }

    @Test func stableRNGHelpers() {
        var a = SplitMix64(seed: 9), b = SplitMix64(seed: 9)
        #expect((0..<100).map { _ in a.stableIndex(below: 17) } == (0..<100).map { _ in b.stableIndex(below: 17) })
        var c = SplitMix64(seed: 3)
        var counts = [Int](repeating: 0, count: 4)
        for _ in 0..<40_000 { counts[c.stableIndex(below: 4)] += 1 }
        #expect(counts.allSatisfy { abs($0 - 10_000) < 400 })
        var u = SplitMix64(seed: 4)
        #expect((0..<1000).allSatisfy { _ in let x = u.stableUnit(); return x >= 0 && x < 1 })
        #expect(SplitMix64(seed: 1, stream: 0) != SplitMix64(seed: 1, stream: 1))
    }

    // MARK: Reservoir

    @Test func reservoirNeverExceedsBudget() {
        var rng = SeededRandom(seed: 2)
        let buffer = ReservoirBuffer(byteBudget: 5_000, seed: 7)
        for d in 0..<5 {
            for item in domainItems(Int32(d), labels: 4, perLabel: 20, tokens: 5 + d * 3, rng: &rng) {
                buffer.add(item)
                #expect(buffer.bytesUsed <= buffer.byteBudget)
                #expect(buffer.bytesUsed == buffer.items.reduce(0) { $0 + $1.byteSize })
            }
            buffer.appendLedgerEntry(newDomain: Int32(d))
        }
        #expect(buffer.seen == 400)
        #expect(buffer.bytesUsed > 4_000)  // stays nearly full
        #expect(buffer.ledger.entries.map(\.step) == [0, 1, 2, 3, 4])
        #expect(buffer.ledger.entries.allSatisfy { $0.totalBytes <= 5_000 })
        let occupancy = buffer.occupancy()
        #expect(occupancy.values.reduce(0) { $0 + $1.bytes } == buffer.bytesUsed)
        #expect(occupancy.values.reduce(0) { $0 + $1.items } == buffer.count)
        // Too large for the whole budget: rejected, counted.
        #expect(!buffer.add(ReplayItem(tokenIds: Array(repeating: 1, count: 2_000), label: 0, domain: 0)))
        #expect(buffer.rejectedTooLarge == 1)
    }

    @Test func reservoirIsUniformOverTheStream() {
        // Equal-size items: Algorithm R keeps every item with the same probability.
        var firstHalf = 0, total = 0
        for seed in 0..<20 {
            let buffer = ReservoirBuffer(byteBudget: 100 * 64, seed: UInt64(seed))
            for i in 0..<1_000 {
                buffer.add(ReplayItem(tokenIds: Array(repeating: Int32(i), count: 10), label: Int32(i), domain: 0))
            }
            #expect(buffer.count == 100)
            firstHalf += buffer.items.filter { $0.label < 500 }.count
            total += buffer.count
        }
        #expect(total == 2_000)
        #expect(abs(firstHalf - 1_000) < 120)
    }

    @Test func reservoirIsDeterministicAndSamples() {
        var r1 = SeededRandom(seed: 3), r2 = SeededRandom(seed: 3)
        let a = ReservoirBuffer(byteBudget: 3_000, seed: 11), b = ReservoirBuffer(byteBudget: 3_000, seed: 11)
        a.add(items: domainItems(0, labels: 5, perLabel: 30, rng: &r1))
        b.add(items: domainItems(0, labels: 5, perLabel: 30, rng: &r2))
        #expect(a.state == b.state)
        var r3 = SeededRandom(seed: 3)
        let c = ReservoirBuffer(byteBudget: 3_000, seed: 12)
        c.add(items: domainItems(0, labels: 5, perLabel: 30, rng: &r3))
        #expect(c.items != a.items)

        var s1 = SplitMix64(seed: 5), s2 = SplitMix64(seed: 5)
        let batch = a.sample(count: 16, rng: &s1)
        #expect(batch == a.sample(count: 16, rng: &s2))
        #expect(batch.count == 16)
        #expect(a.sample(count: 10_000, rng: &s1).count == a.count)
        #expect(a.sample(count: 0, rng: &s1).isEmpty)
    }

    @Test func reservoirSnapshotRoundTrip() throws {
        var rng = SeededRandom(seed: 4)
        let buffer = ReservoirBuffer(byteBudget: 20_000, seed: 1)
        buffer.add(items: domainItems(0, labels: 3, perLabel: 10, target: 16, rng: &rng))
        buffer.appendLedgerEntry(newDomain: 0)
        let data = try JSONEncoder().encode(buffer.snapshot())
        let snapshot = try JSONDecoder().decode(ReplayBufferSnapshot.self, from: data)
        #expect(snapshot == buffer.snapshot())
        let restored = try #require(try snapshot.makeBuffer() as? ReservoirBuffer)
        #expect(restored.state == buffer.state)
        // Both continue identically (the generator state came back too).
        let more = domainItems(1, labels: 3, perLabel: 40, target: 16, rng: &rng)
        buffer.add(items: more)
        restored.add(items: more)
        #expect(restored.state == buffer.state)
    }

    // MARK: Dual stream

    private func config(budget: Int = 60_000, seed: UInt64 = 1, borrow: Bool = true) -> DualStreamConfig {
        DualStreamConfig(byteBudget: budget, domainFraction: 0.7, floorWeight: 0.2, samplingFloorWeight: 0.2,
                         floorBytes: 1_000, forgettingEMA: 0.5, newestDomainBorrowsSlack: borrow, seed: seed)
    }

    @Test func dualStreamKeepsBudgetFloorsAndClassBalance() throws {
        var rng = SeededRandom(seed: 5)
        let buffer = try DualStreamBuffer(config: config())
        #expect(buffer.domainBudget == 42_000 && buffer.generalBudget == 18_000)
        buffer.addGeneral(items: generalItems(200, target: 32, rng: &rng))
        checkInvariants(buffer)
        var offered: [Int32: Int] = [:]
        for d in Int32(0)..<10 {
            var forgetting: [Int32: Float] = [:]
            for old in 0..<d { forgetting[old] = rng.float(-0.05, 0.3) }
            let items = domainItems(d, labels: 6, perLabel: 40, tokens: 10 + Int(d), rng: &rng)
            offered[d] = items.count
            try buffer.addDomain(d, items: items, forgetting: forgetting)
            checkInvariants(buffer)
            buffer.addGeneral(items: generalItems(30, target: 32, rng: &rng))
            checkInvariants(buffer)
            buffer.updateForgetting([0: rng.float(0, 0.2)])
            checkInvariants(buffer)
            for seen in buffer.domains {
                let items = buffer.items(of: seen)
                let largest = items.map(\.byteSize).max() ?? 0
                #expect(items.count >= 1)
                // Filled to within one item of the floor (or holds everything it was given).
                #expect(items.reduce(0) { $0 + $1.byteSize } + largest > buffer.floorBytes(of: seen)! || items.count == offered[seen])
                // Class-balanced eviction: all six intents survive while the quota allows it.
                #expect(Set(items.map(\.label)).count == 6)
            }
        }
        #expect(buffer.ledger.entries.count == 10)
        #expect(buffer.ledger.entries.map(\.step) == Array(0..<10))
        #expect(buffer.ledger.entries.map(\.newDomain) == (0..<10).map { Int32($0) })
        let last = try #require(buffer.ledger.last)
        #expect(last.domains.count == 10 && last.domains.allSatisfy { $0.quota != nil && $0.labels == 6 })
        #expect(last.generalItems == buffer.generalCount && last.generalBytes == buffer.generalBytesUsed)
        // Borrowing keeps the domain stream nearly full.
        #expect(buffer.domainBytesUsed > buffer.domainBudget * 9 / 10)
    }

    @Test func quotasAndSamplingFollowForgetting() throws {
        var rng = SeededRandom(seed: 6)
        let buffer = try DualStreamBuffer(config: config(budget: 100_000))
        for d in Int32(0)..<4 { try buffer.addDomain(d, items: domainItems(d, labels: 4, perLabel: 60, rng: &rng)) }
        // Before any forgetting is measured, old domains share equally.
        let equal = (0..<3).map { buffer.quota(of: Int32($0))! }
        #expect(Set(equal).count == 1)
        try buffer.addDomain(4, items: domainItems(4, labels: 4, perLabel: 60, rng: &rng),
                             forgetting: [0: 0.4, 1: 0.0, 2: 0.1, 3: 0.2])
        checkInvariants(buffer)
        let quota = (0..<4).map { buffer.quota(of: Int32($0))! }
        let weight = (0..<4).map { buffer.importanceWeight(of: Int32($0))! }
        let sampling = (0..<4).map { buffer.samplingWeight(of: Int32($0))! }
        #expect(quota[0] > quota[3] && quota[3] > quota[2] && quota[2] > quota[1])
        #expect(weight[0] > weight[3] && weight[3] > weight[2] && weight[2] > weight[1])
        #expect(sampling[0] > sampling[3] && sampling[3] > sampling[2] && sampling[2] > sampling[1])
        // Formula: w_d = φ/D + (1−φ)·f_d/Σf, with the new domain's prior = mean measured forgetting (0.175).
        let f: [Double] = [0.4, 0, 0.1, 0.2, 0.175]
        let sum = f.reduce(0, +)
        for d in 0..<5 {
            #expect(abs(buffer.importanceWeight(of: Int32(d))! - (0.2 / 5 + 0.8 * f[d] / sum)) < 1e-6)
        }
        // The domain with no forgetting still keeps its floor share, and an item of each intent.
        #expect(quota[1] >= buffer.floorBytes(of: 1)!)
        #expect(Set(buffer.items(of: 1).map(\.label)).count == 4)
        let bytes = (0..<4).map { d in buffer.items(of: Int32(d)).reduce(0) { $0 + $1.byteSize } }
        #expect(zip(bytes, quota).allSatisfy { $0 <= $1 })

        // Replay draws follow the sampling weights.
        var s = SplitMix64(seed: 1)
        var drawn = [Int32: Int]()
        let n = 20_000
        for _ in 0..<(n / 100) {
            for item in buffer.sample(count: 100, rng: &s) { drawn[item.domain, default: 0] += 1 }
        }
        for d in Int32(0)..<5 {
            #expect(abs(Double(drawn[d] ?? 0) / Double(n) - buffer.samplingWeight(of: d)!) < 0.02)
        }
    }

    @Test func forgettingIsSmoothedByEMA() throws {
        var rng = SeededRandom(seed: 7)
        let buffer = try DualStreamBuffer(config: config())
        try buffer.addDomain(0, items: domainItems(0, labels: 2, perLabel: 5, rng: &rng))
        try buffer.addDomain(1, items: domainItems(1, labels: 2, perLabel: 5, rng: &rng))
        buffer.updateForgetting([0: 0.4])
        #expect(buffer.forgettingSignal(of: 0) == Double(Float(0.4)))
        buffer.updateForgetting([0: 0.0])
        #expect(abs(buffer.forgettingSignal(of: 0)! - 0.2) < 1e-7)
        buffer.updateForgetting([0: .nan, 7: 1])  // ignored
        #expect(abs(buffer.forgettingSignal(of: 0)! - 0.2) < 1e-7)
        #expect(buffer.forgettingSignal(of: 1) == nil)
    }

    @Test func budgetTooSmallChangesNothing() throws {
        var rng = SeededRandom(seed: 8)
        let buffer = try DualStreamBuffer(config: DualStreamConfig(byteBudget: 4_000, floorBytes: 1_000))
        try buffer.addDomain(0, items: domainItems(0, labels: 2, perLabel: 5, rng: &rng))
        try buffer.addDomain(1, items: domainItems(1, labels: 2, perLabel: 5, rng: &rng))
        let before = buffer.state
        #expect(throws: ReplayError.budgetTooSmall(domains: 3, floorBytes: 1_000, domainBudget: 2_800)) {
            try buffer.addDomain(2, items: domainItems(2, labels: 2, perLabel: 5, rng: &rng))
        }
        #expect(buffer.state == before)
        #expect(throws: ReplayError.self) { try DualStreamBuffer(config: DualStreamConfig(byteBudget: 10, domainFraction: 1.5)) }
        #expect(throws: ReplayError.self) { try DualStreamBuffer(config: DualStreamConfig(byteBudget: 10, forgettingEMA: 0)) }
    }

    @Test func waterFillingQuotas() {
        #expect(DualStreamBuffer.waterFill(weights: [0.7, 0.2, 0.1], floors: [100, 100, 100], budget: 1_000) == [700, 200, 100])
        #expect(DualStreamBuffer.waterFill(weights: [0.9, 0.05, 0.05], floors: [100, 100, 100], budget: 1_000) == [800, 100, 100])
        #expect(DualStreamBuffer.waterFill(weights: [1, 1, 1], floors: [300, 300, 300], budget: 900) == [300, 300, 300])
        let q = DualStreamBuffer.waterFill(weights: [0.5, 0.3, 0.2], floors: [10, 10, 10], budget: 1_001)
        #expect(q.reduce(0, +) <= 1_001 && q[0] > q[1] && q[1] > q[2])
    }

    @Test func cappedFillingQuotas() {
        // caps above every share: the plain water-filling
        #expect(DualStreamBuffer.cappedFill(weights: [0.7, 0.2, 0.1], floors: [100, 100, 100], caps: [5_000, 5_000, 5_000],
                                            budget: 1_000) == [700, 200, 100])
        #expect(DualStreamBuffer.cappedFill(weights: [0.9, 0.05, 0.05], floors: [100, 100, 100], caps: [5_000, 5_000, 5_000],
                                            budget: 1_000) == [800, 100, 100])
        // a capped domain frees its share above the cap for the others, in proportion to weight
        #expect(DualStreamBuffer.cappedFill(weights: [0.25, 0.25, 0.5], floors: [10, 10, 10], caps: [50, 5_000, 5_000],
                                            budget: 1_000) == [50, 316, 633])
        // everything fits: every domain at its cap; a cap below the floor counts as the floor
        #expect(DualStreamBuffer.cappedFill(weights: [0.5, 0.5], floors: [100, 100], caps: [300, 20], budget: 1_000) == [300, 100])
        // floors win over shares and caps never push the sum over the budget
        var rng = SeededRandom(seed: 4)
        for _ in 0..<200 {
            let n = 1 + Int(rng.next() % 12)
            let w = (0..<n).map { _ in Double(rng.next() % 100) / 100 }
            let floors = (0..<n).map { _ in 1 + Int(rng.next() % 50) }
            let caps = (0..<n).map { _ in Int(rng.next() % 400) }
            let budget = floors.reduce(0, +) + Int(rng.next() % 2_000)
            let q = DualStreamBuffer.cappedFill(weights: w, floors: floors, caps: caps, budget: budget)
            #expect(q.reduce(0, +) <= budget)
            for i in 0..<n {
                #expect(q[i] >= floors[i] && q[i] <= max(caps[i], floors[i]))
            }
            // nothing left unused while some domain is below its cap (up to the rounding of n shares)
            if q.indices.contains(where: { q[$0] < max(caps[$0], floors[$0]) && w[$0] > 0 }) {
                #expect(budget - q.reduce(0, +) <= n + 1)
            }
        }
    }

    /// The 52-domain case: many domains smaller than their share. Without redistribution their
    /// unfilled quotas stay empty while the large domains are evicted to theirs; with it the large
    /// domains keep the difference, the small ones keep everything, and the budget still holds.
    @Test func redistributionFillsWhatSmallDomainsCannot() throws {
        func run(_ redistribute: Bool) throws -> DualStreamBuffer {
            var rng = SeededRandom(seed: 21)
            let buffer = try DualStreamBuffer(config: DualStreamConfig(byteBudget: 30_000, floorBytes: 100, redistributeUnused: redistribute,
                                                                       seed: 3))
            for d in Int32(0)..<12 {
                let large = d % 4 == 0
                try buffer.addDomain(d, items: domainItems(d, labels: 3, perLabel: large ? 60 : 2, rng: &rng))
                checkInvariants(buffer)
                for seen in buffer.domains where seen % 4 != 0 && seen != d {
                    // a small domain (6 items of 72 bytes) is below its share: capped at what it holds, or not
                    let held = buffer.items(of: seen).reduce(0) { $0 + $1.byteSize }
                    #expect(held == 432)
                    #expect(redistribute ? buffer.quota(of: seen)! == held : buffer.quota(of: seen)! > held)
                }
            }
            return buffer
        }
        let plain = try run(false), filled = try run(true)
        let large: [Int32] = [0, 4, 8], small: [Int32] = [1, 2, 3, 5, 6, 7, 9, 10, 11]
        func bytes(_ b: DualStreamBuffer, _ ds: [Int32]) -> Int { ds.reduce(0) { $0 + b.items(of: $1).reduce(0) { $0 + $1.byteSize } } }
        #expect(filled.domainBytesUsed > plain.domainBytesUsed)
        #expect(bytes(filled, large) > bytes(plain, large))
        #expect(bytes(filled, small) == bytes(plain, small))  // the small domains keep all they had
        for d in small { #expect(filled.items(of: d).count == 6) }
        // the option is recorded with the buffer's state and survives a round trip
        let back = try DualStreamBuffer(state: filled.state)
        #expect(back.state == filled.state && back.config.redistributeUnused == true)
    }

    @Test func withoutBorrowingEveryDomainStaysWithinQuota() throws {
        var rng = SeededRandom(seed: 9)
        let buffer = try DualStreamBuffer(config: config(borrow: false))
        for d in Int32(0)..<6 {
            try buffer.addDomain(d, items: domainItems(d, labels: 3, perLabel: 80, rng: &rng), forgetting: [0: 0.3])
            checkInvariants(buffer)
            for seen in buffer.domains {
                #expect(buffer.items(of: seen).reduce(0) { $0 + $1.byteSize } <= buffer.quota(of: seen)!)
            }
        }
    }

    @Test func dualStreamIsDeterministic() throws {
        func run(seed: UInt64) throws -> DualStreamBuffer.State {
            var rng = SeededRandom(seed: 10)
            let buffer = try DualStreamBuffer(config: config(budget: 20_000, seed: seed))
            for d in Int32(0)..<5 {
                try buffer.addDomain(d, items: domainItems(d, labels: 4, perLabel: 25, rng: &rng), forgetting: [0: 0.2, 1: 0.1])
                buffer.addGeneral(items: generalItems(40, target: 8, rng: &rng))
            }
            return buffer.state
        }
        #expect(try run(seed: 1) == run(seed: 1))
        #expect(try run(seed: 1).domains.map(\.items) != run(seed: 2).domains.map(\.items))
    }

    @Test func dualStreamSnapshotRoundTrip() throws {
        var rng = SeededRandom(seed: 11)
        let buffer = try DualStreamBuffer(config: config(budget: 80_000))
        buffer.addGeneral(items: generalItems(50, target: 64, rng: &rng))
        for d in Int32(0)..<3 {
            var items = domainItems(d, labels: 3, perLabel: 20, target: 64, rng: &rng)
            for i in items.indices { items[i].logits = rng.floats(3) }
            try buffer.addDomain(d, items: items, forgetting: [0: 0.15])
        }
        let data = try JSONEncoder().encode(buffer.snapshot())
        let snapshot = try JSONDecoder().decode(ReplayBufferSnapshot.self, from: data)
        #expect(snapshot == buffer.snapshot())
        let restored = try #require(try snapshot.makeBuffer() as? DualStreamBuffer)
        #expect(restored.state == buffer.state)
        #expect(restored.ledger == buffer.ledger)
        // Continue both: identical evictions, samples and ledgers.
        let next = domainItems(3, labels: 3, perLabel: 20, target: 64, rng: &rng)
        try buffer.addDomain(3, items: next, forgetting: [1: 0.3])
        try restored.addDomain(3, items: next, forgetting: [1: 0.3])
        #expect(restored.state == buffer.state)
        var s1 = SplitMix64(seed: 2), s2 = SplitMix64(seed: 2)
        #expect(buffer.sample(count: 32, rng: &s1) == restored.sample(count: 32, rng: &s2))
        // A tampered snapshot is refused.
        var bad = buffer.state
        bad.config.byteBudget = 100
        #expect(throws: ReplayError.self) { try DualStreamBuffer(state: bad) }
    }

    /// What a buffer keeps depends on item sizes and its generator, never on the stored logits'
    /// values: the ground for computing logits only for the kept items (`DomainTrainer.updateBuffers`).
    @Test func keptItemsDoNotDependOnLogitValues() throws {
        func withLogits(_ items: [ReplayItem], _ value: (Int) -> Float) -> [ReplayItem] {
            items.enumerated().map { i, it in var x = it; x.logits = [value(i), -value(i), 0.5]; return x }
        }
        var rng = SeededRandom(seed: 13)
        let domains = (Int32(0)..<4).map { domainItems($0, labels: 3, perLabel: 15, rng: &rng) }
        let a = try DualStreamBuffer(config: config(budget: 9_000)), b = try DualStreamBuffer(config: config(budget: 9_000))
        let ra = ReservoirBuffer(byteBudget: 4_000, seed: 5), rb = ReservoirBuffer(byteBudget: 4_000, seed: 5)
        for (d, items) in domains.enumerated() {
            try a.addDomain(Int32(d), items: withLogits(items) { _ in 0 }, forgetting: [0: 0.1])
            try b.addDomain(Int32(d), items: withLogits(items) { Float($0) * 0.37 }, forgetting: [0: 0.1])
            ra.add(items: withLogits(items) { _ in 0 })
            rb.add(items: withLogits(items) { Float($0) - 3 })
            #expect(a.items(of: Int32(d)).map(\.tokenIds) == b.items(of: Int32(d)).map(\.tokenIds))
            #expect(ra.items.map(\.tokenIds) == rb.items.map(\.tokenIds))
            // replacing one domain's logits changes only those, in item order
            let fresh = b.items(of: Int32(d)).indices.map { [Float($0), 1, 2] }
            a.replaceLogits(of: Int32(d), with: fresh)
            #expect(a.items(of: Int32(d)).map { $0.logits! } == fresh)
            let held = rb.items.filter { $0.domain == Int32(d) }
            let again = held.indices.map { [Float(-$0), 7, 8] }
            ra.replaceLogits(of: Int32(d), with: again)
            #expect(ra.items.filter { $0.domain == Int32(d) }.map { $0.logits! } == again)
            #expect(ra.bytesUsed == rb.bytesUsed && a.bytesUsed == b.bytesUsed)
        }
        // both buffers had to choose: fewer items kept than offered
        #expect(a.domains.reduce(0) { $0 + a.items(of: $1).count } < 4 * 45 && ra.items.count < 4 * 45)
    }

    @Test func generalStream() throws {
        var rng = SeededRandom(seed: 12)
        let buffer = try DualStreamBuffer(config: config(budget: 30_000))
        buffer.addGeneral(items: generalItems(500, target: 48, rng: &rng))
        checkInvariants(buffer)
        #expect(buffer.generalBytesUsed > buffer.generalBudget * 8 / 10)
        var s = SplitMix64(seed: 3)
        let batch = buffer.sampleGeneral(count: 8, rng: &s)
        #expect(batch.count == 8 && batch.allSatisfy { $0.label == -1 && $0.domain == -1 && $0.target?.count == 48 })
        #expect(buffer.sample(count: 8, rng: &s).isEmpty)  // no domain yet
        #expect(buffer.occupancy()[-1]?.items == buffer.generalCount)
    }
}
