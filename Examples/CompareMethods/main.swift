// compare-methods — an experiment written as a Swift program instead of a config file.
//
//   swift run -c release compare-methods [model-dir]
//
// Builds a scenario in code (three hand-written product domains plus synthetic ones), then runs
// Dual-Replay and LoRA + replay over two domain orderings and prints the table.
import DualReplay
import Foundation

let modelDir = CommandLine.arguments.dropFirst().first ?? "models/all-MiniLM-L6-v2"
setComputeThreads(2)

func rows(_ domain: String, _ split: Split, _ pairs: [(String, String)]) -> [IntentExample] {
    pairs.map { IntentExample(text: $0.0, intent: "\(domain).\($0.1)", domain: domain, split: split) }
}

// A hand-written domain: a few utterances per intent (real data would come from JSONL).
let wifiTrain: [(String, String)] = [
    ("my router keeps dropping the connection", "outage"), ("internet is down again", "outage"),
    ("no wifi since this morning", "outage"), ("the network is not working at all", "outage"),
    ("upgrade me to the fiber plan", "upgrade"), ("i want faster internet", "upgrade"),
    ("can i get the 1 gig package", "upgrade"), ("switch my plan to a faster one", "upgrade"),
    ("cancel my internet subscription", "cancel"), ("i want to end my broadband contract", "cancel"),
    ("please terminate my wifi service", "cancel"), ("stop my internet plan", "cancel"),
]
let wifiTest: [(String, String)] = [
    ("wifi has been out for hours", "outage"), ("move me to a quicker plan", "upgrade"), ("close my broadband account", "cancel"),
]
let wifi = DomainData(name: "home-internet", intents: ["home-internet.cancel", "home-internet.outage", "home-internet.upgrade"],
                      train: rows("home-internet", .train, wifiTrain), val: rows("home-internet", .val, wifiTest),
                      test: rows("home-internet", .test, wifiTest))

var domains = SyntheticCorpus.make(config: SyntheticConfig(domains: 3, intentsPerDomain: 5, trainPerIntent: 20, seed: 7))
domains.insert(wifi, at: 1)
let scenario = try Scenario(domains: domains)

var config = ExperimentConfig(name: "compare-methods", model: modelDir, data: DataConfig(synthetic: SyntheticConfig()),
                              methods: [MethodConfig(kind: .dualReplay), MethodConfig(kind: .loraReplay)])
config.orderingSeeds = [0, 1]
config.latencySamples = 0
var training = TrainingDefaults()
training.bufferExamples = 60
config.training = training

let encoder = try SentenceEncoder(modelDirectory: URL(fileURLWithPath: modelDir), maxLength: training.maxLength)
try config.validate()
try ExperimentSetup.checkResources(config, model: encoder.config, scenario: scenario)
let runner = ExperimentRunner(config: config, scenario: scenario, encoder: encoder,
                              generalTexts: SyntheticCorpus.generalText(count: 500, seed: 1), codeVersion: "example")
runner.progress = { FileHandle.standardError.write(($0 + "\n").data(using: .utf8)!) }
let results = try runner.run()
print(ResultsReport.markdown(results))
