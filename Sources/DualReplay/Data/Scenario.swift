// A continual-learning scenario: an ordered list of domains, each with frozen splits, its intents
// and a global label offset, so every (domain, intent) pair has one global class id.
import Foundation

public enum ScenarioError: LocalizedError, Equatable {
    case emptyScenario
    case duplicateDomain(String)
    case domainWithoutIntents(String)
    case unknownDomain(String)
    case unknownLabel(label: String, domain: String)

    public var errorDescription: String? {
        switch self {
        case .emptyScenario: return "a scenario needs at least one domain"
        case .duplicateDomain(let d):
            return "domain \"\(d)\" appears twice; load one of the datasets with a domainPrefix (e.g. \"nlupp\")"
        case .domainWithoutIntents(let d): return "domain \"\(d)\" has no intents"
        case .unknownDomain(let d): return "no domain \"\(d)\" in the scenario"
        case .unknownLabel(let label, let d): return "label \"\(label)\" is not an intent of domain \"\(d)\""
        }
    }
}

/// One domain of a scenario. Its splits are fixed at construction: `train` holds only rows whose
/// split is `.train`, so training code can never see a val or test row.
public struct ScenarioDomain: Codable, Hashable, Sendable {
    public let name: String
    /// Sorted; the domain's class `k` has global id `labelOffset + k`.
    public let intents: [String]
    /// Global id of the domain's first class (the number of classes of all earlier domains).
    public internal(set) var labelOffset: Int32
    public let train: [IntentExample]
    public let val: [IntentExample]
    public let test: [IntentExample]
    public internal(set) var multiIntentTest: [IntentExample]

    init(_ data: DomainData, labelOffset: Int32) {
        name = data.name
        intents = data.intents
        self.labelOffset = labelOffset
        train = data.train.filter { $0.split == .train }
        val = data.val.filter { $0.split == .val }
        test = data.test.filter { $0.split == .test }
        multiIntentTest = data.multiIntentTest.filter { $0.split == .test }
    }

    public var classCount: Int { intents.count }
    /// Global class ids of this domain.
    public var classRange: Range<Int32> { labelOffset..<(labelOffset + Int32(intents.count)) }
    public var classes: [Int32] { Array(classRange) }

    /// Global class id of one of this domain's intents.
    public func globalLabel(of intent: String) -> Int32? {
        // intents is sorted, so binary search.
        var lo = 0, hi = intents.count
        while lo < hi {
            let mid = (lo + hi) / 2
            if intents[mid] < intent { lo = mid + 1 } else { hi = mid }
        }
        return lo < intents.count && intents[lo] == intent ? labelOffset + Int32(lo) : nil
    }

    /// Global ids of an example's labels (labels outside the domain are left out).
    public func globalLabels(of example: IntentExample) -> [Int32] { example.intents.compactMap(globalLabel(of:)) }

    public func intent(forGlobalLabel id: Int32) -> String? {
        classRange.contains(id) ? intents[Int(id - labelOffset)] : nil
    }
}

/// Domains in training order. Build it from datasets (chained), from synthetic domains, then pick an
/// order with `ordering(seed:)`.
public struct Scenario: Codable, Hashable, Sendable {
    public private(set) var domains: [ScenarioDomain]

    public init(domains: [DomainData]) throws {
        guard !domains.isEmpty else { throw ScenarioError.emptyScenario }
        var names = Set<String>()
        var built: [ScenarioDomain] = []
        var offset: Int32 = 0
        for d in domains {
            guard names.insert(d.name).inserted else { throw ScenarioError.duplicateDomain(d.name) }
            guard !d.intents.isEmpty else { throw ScenarioError.domainWithoutIntents(d.name) }
            let sorted = Array(Set(d.intents)).sorted()
            let data = DomainData(name: d.name, intents: sorted, train: d.train, val: d.val, test: d.test,
                                  multiIntentTest: d.multiIntentTest)
            built.append(ScenarioDomain(data, labelOffset: offset))
            offset += Int32(sorted.count)
        }
        self.domains = built
    }

    /// Chains datasets in the given order, e.g. CLINC150's 10 domains, BANKING77, SNIPS, ATIS and
    /// NLU++ banking + hotels (15). Same-named domains must be told apart with `domainPrefix`.
    public init(datasets: [IntentDataset]) throws {
        try self.init(domains: datasets.flatMap(\.domains))
    }

    public var count: Int { domains.count }
    public var domainNames: [String] { domains.map(\.name) }
    /// Total number of global classes.
    public var numClasses: Int { domains.reduce(0) { $0 + $1.classCount } }

    public func index(ofDomain name: String) -> Int? { domains.firstIndex { $0.name == name } }

    /// Index of the domain a global class id belongs to.
    public func domainIndex(forGlobalLabel id: Int32) -> Int? { domains.firstIndex { $0.classRange.contains(id) } }

    /// The rows training may use for the domain at `index`: only its train split, never val or test.
    public func trainingExamples(domain index: Int) -> [IntentExample] { domains[index].train }
    public func validationExamples(domain index: Int) -> [IntentExample] { domains[index].val }
    public func testExamples(domain index: Int) -> [IntentExample] { domains[index].test }

    /// A seeded permutation of the domains with label offsets recomputed for the new order. Seed 0
    /// keeps the given (file) order. Other seeds shuffle with SplitMix64 Fisher-Yates.
    public func ordering(seed: UInt64) -> Scenario {
        var permuted = domains
        if seed != 0 {
            var rng = SplitMix64(seed: seed)
            permuted.stableShuffle(using: &rng)
        }
        var offset: Int32 = 0
        for i in permuted.indices {
            permuted[i].labelOffset = offset
            offset += Int32(permuted[i].classCount)
        }
        var copy = self
        copy.domains = permuted
        return copy
    }

    /// Adds multi-intent test rows (e.g. from `IntentDataset.loadMultiIntentTest`) to the domains they
    /// name. Every label must be an intent of that domain.
    public func attachingMultiIntentTest(_ examples: [IntentExample]) throws -> Scenario {
        var copy = self
        for example in examples {
            guard let i = index(ofDomain: example.domain) else { throw ScenarioError.unknownDomain(example.domain) }
            if let bad = example.intents.first(where: { copy.domains[i].globalLabel(of: $0) == nil }) {
                throw ScenarioError.unknownLabel(label: bad, domain: example.domain)
            }
            var row = example
            row.split = .test
            copy.domains[i].multiIntentTest.append(row)
        }
        return copy
    }

    /// A stable 64-bit FNV-1a hash (16 hex digits) of the content in this order: each domain's name,
    /// intents and the sorted rows of each split. Same data and order ⇒ same fingerprint, on any
    /// machine; it goes into results files for provenance.
    public var fingerprint: String { Scenario.hex(hash(domains)) }

    /// As `fingerprint`, but independent of the domain order (domains sorted by name).
    public var contentFingerprint: String { Scenario.hex(hash(domains.sorted { $0.name < $1.name })) }

    private func hash(_ list: [ScenarioDomain]) -> UInt64 {
        var h = FNV1a()
        for d in list {
            h.add("domain\u{1F}\(d.name)\u{1E}")
            h.add(d.intents.joined(separator: "\u{1F}"))
            h.add("\u{1E}")
            for (tag, rows) in [("train", d.train), ("val", d.val), ("test", d.test), ("multi", d.multiIntentTest)] {
                h.add("\(tag)\u{1E}")
                let lines = rows.map { "\($0.intents.joined(separator: "#"))\u{1F}\($0.text)" }.sorted()
                for line in lines { h.add(line); h.add("\u{1E}") }
            }
        }
        return h.value
    }

    private static func hex(_ v: UInt64) -> String {
        let s = String(v, radix: 16)
        return String(repeating: "0", count: 16 - s.count) + s
    }
}

extension ScenarioDomain {
    /// The domain's `split` rows (val or test), at most `cap` of them: a fixed random subset
    /// seeded by the domain's name, so every method and ordering scores the same utterances.
    public func evaluationRows(_ split: Split, cap: Int?) -> [IntentExample] {
        (split == .test ? test : val).fixedSubset(atMost: cap, seed: FNV1a.of(name))
    }
}
