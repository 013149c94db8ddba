import ArgumentParser
import DualReplay
import Foundation

struct DemoCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "demo",
        abstract: "The built-in default: Dual-Replay vs LoRA + replay on a synthetic multi-domain intent corpus.",
        discussion: """
        Generates a support-assistant corpus (product domains with their own vocabulary, confusable \
        intents shared across domains, head/tail skew), trains both methods domain after domain on \
        the frozen encoder, and prints the results table. A few minutes on 2 cores.
        """
    )

    @OptionGroup var modelOptions: ModelOptions

    @Option(help: "Number of synthetic domains.")
    var domains: Int = 5

    @Option(help: "Domain orderings.")
    var orderings: Int = 1

    @Option(help: "Output directory.")
    var out: String = "results/demo"

    func validate() throws {
        guard domains >= 2 else { throw ValidationError("--domains must be at least 2") }
        guard orderings >= 1 else { throw ValidationError("--orderings must be at least 1") }
    }

    func run() throws {
        var cfg = ExperimentConfig(
            name: "demo", model: modelOptions.model,
            data: DataConfig(synthetic: SyntheticConfig(domains: domains, intentsPerDomain: 6, trainPerIntent: 30, valPerIntent: 10,
                                                        testPerIntent: 20, seed: 1, headTailSkew: 0.5)),
            methods: [MethodConfig(kind: .dualReplay), MethodConfig(kind: .loraReplay)])
        cfg.orderings = orderings
        cfg.threads = modelOptions.threads
        cfg.latencySamples = 100
        var training = TrainingDefaults()
        training.bufferExamples = 100  // about a tenth of the corpus: replay must choose
        cfg.training = training
        try runExperiment(cfg, out: out, threads: modelOptions.threads, model: modelOptions.model)
    }
}
