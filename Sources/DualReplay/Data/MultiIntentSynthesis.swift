// Synthesized multi-intent utterances: single-intent utterances of one domain, of different
// intents, joined with conjunctions ("book a table for two and then play some jazz"), which is
// how MixATIS and MixSNIPS were built from ATIS and SNIPS. The remedy for multi-intent fragility
// (`MethodConfig.multiIntent`) trains on them; the set decision rule is calibrated on them.
import Foundation

/// A method's multi-intent augmentation, resolved (`MethodSettings.multiIntent`; nil = off).
public struct MultiIntentAugmentation: Codable, Equatable, Sendable {
    /// Synthesized utterances per single-intent training utterance of the domain (0.2: one in five).
    public var augmentShare: Double
    /// Joins, drawn uniformly per join.
    public var conjunctions: [String]
    /// Intents per synthesized utterance: 2...maxIntents, drawn uniformly.
    public var maxIntents: Int

    public init(augmentShare: Double = ConfigDefaults.multiIntentAugmentShare,
                conjunctions: [String] = ConfigDefaults.multiIntentConjunctions,
                maxIntents: Int = ConfigDefaults.multiIntentMaxIntents) {
        self.augmentShare = augmentShare
        self.conjunctions = conjunctions
        self.maxIntents = maxIntents
    }
}

public enum MultiIntentSynthesis {
    /// Stream salts: training utterances and the validation utterances that calibrate the set rule
    /// never share a draw.
    public static let trainingSalt: UInt64 = 0x4D49_5452 // "MITR"
    public static let validationSalt: UInt64 = 0x4D49_5641 // "MIVA"

    /// `count` multi-intent utterances from `examples` (one domain's single-intent rows; rows with
    /// several labels are not used as parts). Utterance i draws from its own SplitMix64 stream keyed
    /// on (domain, salt, i), so it depends on nothing but the domain's rows and i (not on threads,
    /// ranks or any other generator). Each has 2...maxIntents parts of pairwise different intents
    /// (fewer when the domain has fewer intents), the first part uniform over the rows, each next
    /// part uniform over the rows of intents not yet used; `intents` lists the parts' intents in
    /// order. Empty when the domain has fewer than two intents or `count` is 0.
    public static func synthesize(_ examples: [IntentExample], domain: String, count: Int, conjunctions: [String],
                                  maxIntents: Int, salt: UInt64 = trainingSalt) -> [IntentExample] {
        precondition(!conjunctions.isEmpty && maxIntents >= 2, "MultiIntentSynthesis: conjunctions \(conjunctions), maxIntents \(maxIntents)")
        let singles = examples.filter { $0.intents.count == 1 }
        var byIntent: [String: [Int]] = [:]
        for (i, e) in singles.enumerated() { byIntent[e.intent, default: []].append(i) }
        let intents = byIntent.keys.sorted()
        guard intents.count >= 2, count > 0 else { return [] }
        let seed = FNV1a.of(domain) ^ salt
        var out: [IntentExample] = []
        out.reserveCapacity(count)
        for i in 0..<count {
            var rng = SplitMix64(seed: seed, stream: UInt64(i))
            let parts = min(intents.count, 2 + rng.stableIndex(below: maxIntents - 1))
            var chosen = [singles[rng.stableIndex(below: singles.count)]]
            while chosen.count < parts {
                // uniform over the rows of the intents not used yet
                let used = Set(chosen.map(\.intent))
                let pool = intents.filter { !used.contains($0) }.flatMap { byIntent[$0]! }
                chosen.append(singles[pool[rng.stableIndex(below: pool.count)]])
            }
            var text = chosen[0].text
            for part in chosen.dropFirst() {
                text += " " + conjunctions[rng.stableIndex(below: conjunctions.count)] + " " + part.text
            }
            out.append(IntentExample(text: text, intents: chosen.map(\.intent), domain: chosen[0].domain, split: chosen[0].split))
        }
        return out
    }
}
