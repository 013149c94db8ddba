import ArgumentParser
import DualReplay
import Foundation

struct DemoCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "demo",
        abstract: "A quick look at the frozen encoder: utterances from two domains and their nearest neighbours."
    )

    @OptionGroup var modelOptions: ModelOptions

    func run() throws {
        let encoder = try modelOptions.openEncoder()
        let utterances: [(domain: String, text: String)] = [
            ("banking", "please freeze my debit card"), ("banking", "how much money is in my checking account"),
            ("banking", "i want to dispute a charge on my statement"), ("banking", "send 50 dollars to my brother"),
            ("travel", "book me a flight to lisbon next friday"), ("travel", "do i need a visa to visit japan"),
            ("travel", "what is the baggage allowance on my flight"), ("travel", "find a hotel near the airport"),
        ]
        let queries = ["lock my card, it was stolen", "which documents do i need to enter brazil",
                       "transfer money to my savings", "i need a room for two nights"]
        let corpus = encoder.embed(utterances.map(\.text))
        let q = encoder.embed(queries)
        print("Nearest neighbours by cosine similarity (frozen \(modelOptions.model)):")
        for (i, query) in queries.enumerated() {
            let scored = corpus.enumerated().map { (j, e) in (j, zip(q[i], e).reduce(Float(0)) { $0 + $1.0 * $1.1 }) }
                .sorted { $0.1 > $1.1 }
            print("\n  \"\(query)\"")
            for (j, s) in scored.prefix(3) {
                print("    \(String(format: "%.3f", s))  [\(utterances[j].domain)] \(utterances[j].text)")
            }
        }
    }
}
