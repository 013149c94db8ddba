// A built-in corpus for the demo and the tests: a support assistant for many product domains.
// Every domain is a brand (made from syllables, so there can be hundreds) selling one kind of
// product; its intents are verb-phrase templates filled with the domain's vocabulary. Many intent
// names (cancel, refund, reset, upgrade, status, ...) recur in most domains as "<domain>.cancel",
// so only the domain's words tell them apart: the confusion continual learning has to survive.
import Foundation

public struct SyntheticConfig: Codable, Hashable, Sendable {
    public var domains: Int
    /// Clamped to the number of intent kinds a domain's product admits (at least 14).
    public var intentsPerDomain: Int
    /// Training examples per intent for the first (head) domain; see `headTailSkew`.
    public var trainPerIntent: Int
    public var valPerIntent: Int
    public var testPerIntent: Int
    public var seed: UInt64
    /// Zipf-like exponent s: domain k (0-based) gets max(1, round(trainPerIntent / (k+1)^s)) training
    /// examples per intent. 0 = balanced. Val and test are not skewed, so evaluation stays comparable.
    public var headTailSkew: Double
    /// Two-intent test utterances per domain ("... and ...", "... then ...").
    public var multiIntentTestPerDomain: Int
    /// Probability that a word of 4+ letters gets a typo (swap, drop or doubled letter).
    public var typoRate: Double
    /// Production-like traffic: the first `headDomains` domains are the large ones (full
    /// `trainPerIntent`); the skew starts after them. 1 = the skew starts at domain 1.
    public var headDomains: Int
    /// Floor of the skewed training examples per intent.
    public var minTrainPerIntent: Int
    /// When set, domain k gets between this and `intentsPerDomain` intents (drawn per domain from
    /// the seed, uniformly); nil = every domain gets `intentsPerDomain`.
    public var intentsPerDomainMin: Int?

    public init(domains: Int = 6, intentsPerDomain: Int = 6, trainPerIntent: Int = 40, valPerIntent: Int = 10,
                testPerIntent: Int = 20, seed: UInt64 = 0, headTailSkew: Double = 0, multiIntentTestPerDomain: Int = 0,
                typoRate: Double = 0.01, headDomains: Int = 1, minTrainPerIntent: Int = 1, intentsPerDomainMin: Int? = nil) {
        self.domains = domains
        self.intentsPerDomain = intentsPerDomain
        self.trainPerIntent = trainPerIntent
        self.valPerIntent = valPerIntent
        self.testPerIntent = testPerIntent
        self.seed = seed
        self.headTailSkew = headTailSkew
        self.multiIntentTestPerDomain = multiIntentTestPerDomain
        self.typoRate = typoRate
        self.headDomains = headDomains
        self.minTrainPerIntent = minTrainPerIntent
        self.intentsPerDomainMin = intentsPerDomainMin
    }

    enum CodingKeys: String, CodingKey, CaseIterable {
        case domains, intentsPerDomain, trainPerIntent, valPerIntent, testPerIntent, seed, headTailSkew, multiIntentTestPerDomain, typoRate
        case headDomains, minTrainPerIntent, intentsPerDomainMin
    }

    /// Encodes the optional traffic fields only when they differ from the defaults, so the
    /// resolved form (and the protocol hash) of older configs stays what it was.
    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(domains, forKey: .domains)
        try c.encode(intentsPerDomain, forKey: .intentsPerDomain)
        try c.encode(trainPerIntent, forKey: .trainPerIntent)
        try c.encode(valPerIntent, forKey: .valPerIntent)
        try c.encode(testPerIntent, forKey: .testPerIntent)
        try c.encode(seed, forKey: .seed)
        try c.encode(headTailSkew, forKey: .headTailSkew)
        try c.encode(multiIntentTestPerDomain, forKey: .multiIntentTestPerDomain)
        try c.encode(typoRate, forKey: .typoRate)
        if headDomains != 1 { try c.encode(headDomains, forKey: .headDomains) }
        if minTrainPerIntent != 1 { try c.encode(minTrainPerIntent, forKey: .minTrainPerIntent) }
        try c.encodeIfPresent(intentsPerDomainMin, forKey: .intentsPerDomainMin)
    }

    /// Every field is optional in a config file; absent ones take the defaults above.
    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        let d = SyntheticConfig()
        self.init(domains: try c.decodeIfPresent(Int.self, forKey: .domains) ?? d.domains,
                  intentsPerDomain: try c.decodeIfPresent(Int.self, forKey: .intentsPerDomain) ?? d.intentsPerDomain,
                  trainPerIntent: try c.decodeIfPresent(Int.self, forKey: .trainPerIntent) ?? d.trainPerIntent,
                  valPerIntent: try c.decodeIfPresent(Int.self, forKey: .valPerIntent) ?? d.valPerIntent,
                  testPerIntent: try c.decodeIfPresent(Int.self, forKey: .testPerIntent) ?? d.testPerIntent,
                  seed: try c.decodeIfPresent(UInt64.self, forKey: .seed) ?? d.seed,
                  headTailSkew: try c.decodeIfPresent(Double.self, forKey: .headTailSkew) ?? d.headTailSkew,
                  multiIntentTestPerDomain: try c.decodeIfPresent(Int.self, forKey: .multiIntentTestPerDomain) ?? d.multiIntentTestPerDomain,
                  typoRate: try c.decodeIfPresent(Double.self, forKey: .typoRate) ?? d.typoRate,
                  headDomains: try c.decodeIfPresent(Int.self, forKey: .headDomains) ?? d.headDomains,
                  minTrainPerIntent: try c.decodeIfPresent(Int.self, forKey: .minTrainPerIntent) ?? d.minTrainPerIntent,
                  intentsPerDomainMin: try c.decodeIfPresent(Int.self, forKey: .intentsPerDomainMin))
    }

    /// Training examples per intent of domain `k` (0-based) after the head/tail skew: the first
    /// `headDomains` get `trainPerIntent`, domain k after them trainPerIntent / (k − headDomains + 2)^s,
    /// never below `minTrainPerIntent`.
    public func trainPerIntent(domain k: Int) -> Int {
        guard headTailSkew != 0, k >= headDomains else { return trainPerIntent }
        let skewed = Int((Double(trainPerIntent) / pow(Double(k - headDomains + 2), headTailSkew)).rounded())
        return min(trainPerIntent, max(max(1, minTrainPerIntent), skewed))
    }

    /// Intents of domain `k` before the product's limit: `intentsPerDomain`, or with
    /// `intentsPerDomainMin` a per-domain draw in [min, intentsPerDomain] (its own stream, so the
    /// rest of the domain is drawn as without it).
    public func intentCount(domain k: Int) -> Int {
        guard let lo = intentsPerDomainMin, lo < intentsPerDomain else { return intentsPerDomain }
        var rng = SplitMix64(seed: seed, stream: 0x494E_5443_4E54 &+ UInt64(k))
        return lo + rng.stableIndex(below: intentsPerDomain - lo + 1)
    }
}

public enum SyntheticCorpus {
    /// Intent kinds that every domain draws its first intents from, so they recur across domains.
    public static let confusableIntents = ["cancel", "refund", "reset", "upgrade", "status"]

    /// Deterministic given `config.seed`. Domain k is the same whatever `config.domains` is.
    public static func make(config: SyntheticConfig) -> [DomainData] {
        let names = domainIdentities(count: config.domains, seed: config.seed)
        return names.enumerated().map { k, identity in
            makeDomain(index: k, identity: identity, config: config)
        }
    }

    /// Plain English sentences for the general replay stream (label -1), deterministic given `seed`.
    public static func generalText(count: Int, seed: UInt64) -> [String] {
        var rng = SplitMix64(seed: seed, stream: 0x6E65_7261_6C)
        let subjects = ["the river", "an old bridge", "the committee", "a small village", "the museum", "the orchestra",
                        "the northern railway", "a local farmer", "the first expedition", "the city council",
                        "the coastal road", "a young painter", "the national team", "the library", "the cathedral"]
        let verbs = ["was built in", "was founded in", "moved to the capital in", "was restored in", "won its first award in",
                     "opened to the public in", "was renamed in", "became famous in", "was damaged by a storm in"]
        let years = (1820...2015).map(String.init)
        let tails = ["and is still in use today", "after a long public debate", "with support from nearby towns",
                     "before the war began", "during a period of rapid growth", "according to historical records",
                     "and attracted many visitors", "under the direction of a new mayor", ""]
        return (0..<max(0, count)).map { _ in
            let s = "\(pick(subjects, &rng)) \(pick(verbs, &rng)) \(pick(years, &rng)) \(pick(tails, &rng))"
            return s.trimmingCharacters(in: .whitespaces)
        }
    }

    // MARK: - Domains

    struct Identity {
        var brand: String
        var category: Category
        var name: String { "\(brand)_\(category.slug)" }
    }

    /// Brands from syllables, unique; categories cycle through a seeded permutation.
    static func domainIdentities(count: Int, seed: UInt64) -> [Identity] {
        var rng = SplitMix64(seed: seed, stream: 0xB7A4_D5)
        var order = Array(categories.indices)
        order.stableShuffle(using: &rng)
        var used = Set<String>()
        var out: [Identity] = []
        while out.count < max(0, count) {
            let brand = makeWord(&rng, syllables: 2 + (rng.stableIndex(below: 3) == 0 ? 1 : 0), ending: true)
            guard brand.count >= 4, brand.count <= 10, used.insert(brand).inserted else { continue }
            out.append(Identity(brand: brand, category: categories[order[out.count % order.count]]))
        }
        return out
    }

    static func makeWord(_ rng: inout SplitMix64, syllables: Int, ending: Bool) -> String {
        let onsets = ["b", "br", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "tr", "pl", "st", "c", "h"]
        let vowels = ["a", "e", "i", "o", "u", "a", "o", "e"]
        let codas = ["", "", "", "n", "r", "l", "x", "s", "m"]
        let endings = ["", "a", "o", "ix", "on", "ia", "ex", "is"]
        var word = ""
        for i in 0..<syllables {
            word += pick(onsets, &rng) + pick(vowels, &rng)
            if i == syllables - 1 || rng.stableIndex(below: 3) == 0 { word += pick(codas, &rng) }
        }
        if ending { word += pick(endings, &rng) }
        return word
    }

    static func makeDomain(index k: Int, identity: Identity, config: SyntheticConfig) -> DomainData {
        var rng = SplitMix64(seed: config.seed, stream: UInt64(k) &+ 1)
        let vocab = Vocabulary(identity: identity, rng: &rng)

        // Intent kinds: up to three of the confusable core first, then the rest of what fits the product.
        let allowed = intentKinds.filter { identity.category.isDevice || !$0.deviceOnly }
        var core = allowed.filter { confusableIntents.contains($0.name) }
        core.stableShuffle(using: &rng)
        let wanted = config.intentCount(domain: k)
        let coreCount = min(3, wanted, core.count)
        var rest = allowed.filter { kind in !core.prefix(coreCount).contains { $0.name == kind.name } }
        rest.stableShuffle(using: &rng)
        let count = min(max(1, wanted), allowed.count)
        let kinds = Array(core.prefix(coreCount) + rest.prefix(count - coreCount))

        let name = identity.name
        var seen = Set<String>()
        // Every template names the brand (alone or in {product}), so each utterance is attributable to
        // its domain even when the intent kind and the product category recur elsewhere.
        func utterance(_ kind: IntentKind, _ rng: inout SplitMix64, opener: Bool = true, closer: Bool = true) -> String {
            // Retry a few times to avoid duplicates, so train and test rarely share a sentence.
            var text = ""
            for _ in 0..<12 {
                text = vocab.render(pick(kind.templates, &rng), &rng)
                text = paraphrase(text, &rng, opener: opener, closer: closer)
                text = addTypos(text, rate: config.typoRate, &rng)
                if seen.insert(text).inserted { break }
            }
            return text
        }
        let label = { (kind: IntentKind) in "\(name).\(kind.name)" }
        var train: [IntentExample] = [], val: [IntentExample] = [], test: [IntentExample] = []
        let trainCount = config.trainPerIntent(domain: k)
        for kind in kinds {
            for _ in 0..<max(0, trainCount) {
                train.append(IntentExample(text: utterance(kind, &rng), intent: label(kind), domain: name, split: .train))
            }
            for _ in 0..<max(0, config.valPerIntent) {
                val.append(IntentExample(text: utterance(kind, &rng), intent: label(kind), domain: name, split: .val))
            }
            for _ in 0..<max(0, config.testPerIntent) {
                test.append(IntentExample(text: utterance(kind, &rng), intent: label(kind), domain: name, split: .test))
            }
        }
        var multi: [IntentExample] = []
        if kinds.count >= 2 {
            let connectors = [" and ", " and then ", ", then ", " and also ", ". also, ", " then "]
            for _ in 0..<max(0, config.multiIntentTestPerDomain) {
                let a = rng.stableIndex(below: kinds.count)
                var b = rng.stableIndex(below: kinds.count - 1)
                if b >= a { b += 1 }
                let first = utterance(kinds[a], &rng, closer: false)
                    .trimmingCharacters(in: CharacterSet(charactersIn: "?.!"))
                let second = utterance(kinds[b], &rng, opener: false)
                multi.append(IntentExample(text: first + pick(connectors, &rng) + second,
                                           intents: [label(kinds[a]), label(kinds[b])], domain: name, split: .test))
            }
        }
        return DomainData(name: name, intents: kinds.map(label).sorted(), train: train, val: val, test: test,
                          multiIntentTest: multi)
    }

    // MARK: - Surface variation

    /// Fillers before, politeness after, sometimes "?" or "." and a capital first letter.
    static func paraphrase(_ text: String, _ rng: inout SplitMix64, opener: Bool, closer: Bool) -> String {
        let openers = ["", "", "", "", "hi, ", "hey ", "hello, ", "um ", "so ", "quick question, ", "excuse me, ", "ok so "]
        let closers = ["", "", "", "", " please", " thanks", " thank you", ", can you help", " asap", " if possible"]
        let before = pick(openers, &rng), after = pick(closers, &rng)
        var out = (opener ? before : "") + text + (closer ? after : "")
        switch rng.stableIndex(below: 10) {
        case 0, 1: out += "?"
        case 2: out += "."
        default: break
        }
        if rng.stableIndex(below: 5) == 0, opener, let first = out.first {
            out = first.uppercased() + out.dropFirst()
        }
        return out
    }

    static func addTypos(_ text: String, rate: Double, _ rng: inout SplitMix64) -> String {
        guard rate > 0 else { return text }
        let words = text.split(separator: " ", omittingEmptySubsequences: false).map { word -> String in
            var chars = Array(word)
            guard chars.count >= 4, chars.allSatisfy(\.isLetter), rng.stableUnit() < rate else { return String(word) }
            let i = 1 + rng.stableIndex(below: chars.count - 2)
            switch rng.stableIndex(below: 3) {
            case 0: chars.swapAt(i, i + 1)
            case 1: chars.remove(at: i)
            default: chars.insert(chars[i], at: i)
            }
            return String(chars)
        }
        return words.joined(separator: " ")
    }

    static func pick<T>(_ list: [T], _ rng: inout SplitMix64) -> T { list[rng.stableIndex(below: list.count)] }

    // MARK: - Vocabulary

    /// The words one domain fills its templates with.
    struct Vocabulary {
        var brand: String
        var noun: String
        var models: [String]
        var category: Category

        init(identity: Identity, rng: inout SplitMix64) {
            brand = identity.brand
            noun = identity.category.noun
            category = identity.category
            let suffixes = ["", "", " 2", " 3", " pro", " mini", " plus", " max", " go", " lite"]
            var list: [String] = []
            while list.count < 3 {
                let model = SyntheticCorpus.makeWord(&rng, syllables: 2, ending: false) + SyntheticCorpus.pick(suffixes, &rng)
                if !list.contains(model) && model != brand { list.append(model) }
            }
            models = list
        }

        func product(_ rng: inout SplitMix64) -> String {
            switch rng.stableIndex(below: 4) {
            case 0: return "\(brand) \(noun)"
            case 1: return "\(brand) \(SyntheticCorpus.pick(models, &rng))"
            default: return "\(brand) \(SyntheticCorpus.pick(models, &rng)) \(noun)"
            }
        }

        /// Replaces {product} {brand} {noun} {model} {item} {part} {issue} {time} {number} {clock} {place}.
        func render(_ template: String, _ rng: inout SplitMix64) -> String {
            var out = ""
            var rest = Substring(template)
            while let open = rest.firstIndex(of: "{") {
                out += rest[..<open]
                guard let close = rest[open...].firstIndex(of: "}") else { break }
                let slot = rest[rest.index(after: open)..<close]
                out += fill(String(slot), &rng)
                rest = rest[rest.index(after: close)...]
            }
            out += rest
            return out
        }

        private func fill(_ slot: String, _ rng: inout SplitMix64) -> String {
            switch slot {
            case "product": return product(&rng)
            case "brand": return brand
            case "noun": return noun
            case "model": return SyntheticCorpus.pick(models, &rng)
            case "item": return SyntheticCorpus.pick(category.items, &rng)
            case "part": return SyntheticCorpus.pick(category.parts, &rng)
            case "issue": return SyntheticCorpus.pick(category.issues, &rng)
            case "time": return SyntheticCorpus.pick(["yesterday", "last week", "two days ago", "on monday", "this morning",
                                                     "last month", "a few days ago", "over the weekend"], &rng)
            case "number": return "\(10000 + rng.stableIndex(below: 90000))"
            case "clock": return SyntheticCorpus.pick(["7 am", "6:30 pm", "noon", "9 pm", "8 in the morning", "midnight"], &rng)
            case "place": return SyntheticCorpus.pick(["my new apartment", "my office", "my parents' house", "a new address",
                                                      "my work address"], &rng)
            default: return slot
            }
        }
    }
}
