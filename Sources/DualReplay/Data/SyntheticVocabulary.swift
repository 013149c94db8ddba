// The synthetic corpus's tables: product categories and intent kinds.
import Foundation

extension SyntheticCorpus {
    // MARK: - Product categories

    struct Category {
        var slug: String
        var noun: String
        /// Physical devices admit pairing, firmware, battery and setup intents; services do not.
        var isDevice: Bool
        /// Things one buys, subscribes to, cancels or upgrades.
        var items: [String]
        /// Settings or components one resets or changes.
        var parts: [String]
        /// Complaints, written to follow "my <product>" in the singular.
        var issues: [String]
    }

    static let categories: [Category] = [
        Category(slug: "router", noun: "router", isDevice: true,
                 items: ["subscription", "protection plan", "order", "mesh extender"],
                 parts: ["wifi password", "network name", "admin login", "parental controls"],
                 issues: ["keeps dropping the connection", "has a blinking red light", "is really slow", "won't connect to the internet"]),
        Category(slug: "thermostat", noun: "thermostat", isDevice: true,
                 items: ["energy plan", "order", "installation appointment", "protection plan"],
                 parts: ["temperature schedule", "wifi connection", "display", "eco mode"],
                 issues: ["shows the wrong temperature", "won't turn on the heat", "keeps going offline", "has a blank screen"]),
        Category(slug: "camera", noun: "security camera", isDevice: true,
                 items: ["cloud recording plan", "subscription", "order", "protection plan"],
                 parts: ["motion alerts", "night vision", "wifi password", "recording schedule"],
                 issues: ["stopped recording", "shows a black screen", "keeps going offline", "sends too many alerts"]),
        Category(slug: "speaker", noun: "smart speaker", isDevice: true,
                 items: ["music subscription", "order", "protection plan", "premium plan"],
                 parts: ["voice assistant", "bluetooth name", "wake word", "volume limit"],
                 issues: ["doesn't respond to my voice", "keeps cutting out", "won't play music", "has a crackling sound"]),
        Category(slug: "watch", noun: "smartwatch", isDevice: true,
                 items: ["fitness subscription", "cellular plan", "order", "extended warranty"],
                 parts: ["watch face", "heart rate alerts", "passcode", "step goal"],
                 issues: ["won't sync with my phone", "drains the battery fast", "has a frozen screen", "doesn't track my steps"]),
        Category(slug: "vacuum", noun: "robot vacuum", isDevice: true,
                 items: ["filter subscription", "order", "protection plan", "replacement brush set"],
                 parts: ["cleaning schedule", "floor map", "no-go zones", "suction level"],
                 issues: ["keeps getting stuck", "won't return to the dock", "stopped charging", "misses half the room"]),
        Category(slug: "printer", noun: "printer", isDevice: true,
                 items: ["ink subscription", "order", "service plan", "toner delivery"],
                 parts: ["wifi setup", "paper size", "print queue", "admin password"],
                 issues: ["keeps jamming", "prints blank pages", "says it is offline", "won't scan"]),
        Category(slug: "mobile", noun: "phone plan", isDevice: false,
                 items: ["contract", "data plan", "family plan", "extra line"],
                 parts: ["voicemail pin", "account password", "data limit", "roaming settings"],
                 issues: ["has no signal", "keeps dropping calls", "shows no data", "charges me for roaming"]),
        Category(slug: "streaming", noun: "streaming account", isDevice: false,
                 items: ["subscription", "premium plan", "membership", "family plan"],
                 parts: ["password", "profile", "parental pin", "download settings"],
                 issues: ["keeps buffering", "won't load", "logs me out", "shows the wrong language"]),
        Category(slug: "ereader", noun: "e-reader", isDevice: true,
                 items: ["book subscription", "order", "protection plan", "audiobook plan"],
                 parts: ["font size", "wifi connection", "library sync", "screen light"],
                 issues: ["freezes on a page", "won't charge", "doesn't sync my books", "has a cracked screen"]),
        Category(slug: "coffee", noun: "coffee machine", isDevice: true,
                 items: ["bean subscription", "order", "descaling kit", "warranty"],
                 parts: ["brew strength", "clock", "water filter", "cup size"],
                 issues: ["leaks water", "won't heat up", "makes weak coffee", "is making a loud noise"]),
        Category(slug: "scooter", noun: "electric scooter", isDevice: true,
                 items: ["ride pass", "order", "insurance", "protection plan"],
                 parts: ["speed limit", "lock code", "cruise control", "headlight"],
                 issues: ["won't turn on", "loses power on hills", "has a flat tire", "shows an error code"]),
        Category(slug: "laptop", noun: "laptop", isDevice: true,
                 items: ["order", "extended warranty", "software license", "accidental damage plan"],
                 parts: ["login password", "bios settings", "keyboard backlight", "display brightness"],
                 issues: ["won't boot", "overheats", "has a flickering screen", "is very slow"]),
        Category(slug: "headset", noun: "headset", isDevice: true,
                 items: ["order", "protection plan", "replacement ear cushions", "premium app plan"],
                 parts: ["noise cancelling", "bluetooth pairing", "equalizer", "touch controls"],
                 issues: ["only plays in one ear", "keeps disconnecting", "won't charge", "has a buzzing sound"]),
        Category(slug: "lock", noun: "smart lock", isDevice: true,
                 items: ["order", "installation appointment", "protection plan", "guest access plan"],
                 parts: ["entry code", "auto lock", "guest codes", "battery alerts"],
                 issues: ["won't unlock", "jams halfway", "keeps beeping", "doesn't recognize my code"]),
        Category(slug: "mealkit", noun: "meal kit", isDevice: false,
                 items: ["subscription", "weekly box", "delivery plan", "family plan"],
                 parts: ["delivery day", "dietary preferences", "account password", "menu choices"],
                 issues: ["arrived damaged", "was missing ingredients", "came late", "had the wrong recipes"]),
        Category(slug: "cloud", noun: "cloud storage account", isDevice: false,
                 items: ["subscription", "storage plan", "business plan", "family plan"],
                 parts: ["password", "two factor login", "sharing settings", "backup schedule"],
                 issues: ["won't sync my files", "says it is full", "keeps logging me out", "lost some of my photos"]),
        Category(slug: "card", noun: "credit card", isDevice: false,
                 items: ["card", "rewards plan", "overdraft protection", "annual membership"],
                 parts: ["pin", "spending limit", "online banking password", "autopay"],
                 issues: ["was declined", "got charged twice", "is not working abroad", "shows a fraud alert"]),
        Category(slug: "insurance", noun: "home insurance policy", isDevice: false,
                 items: ["policy", "coverage plan", "monthly payment plan", "flood add-on"],
                 parts: ["online password", "billing date", "contact details", "payment method"],
                 issues: ["was not renewed", "has the wrong address", "charged me too much", "shows an error"]),
        Category(slug: "console", noun: "game console", isDevice: true,
                 items: ["online membership", "order", "game pass", "protection plan"],
                 parts: ["parental controls", "account password", "storage settings", "controller pairing"],
                 issues: ["won't turn on", "keeps crashing", "has a loud fan", "won't read discs"]),
    ]

    // MARK: - Intent kinds

    struct IntentKind {
        var name: String
        var deviceOnly: Bool
        var templates: [String]
    }

    static let intentKinds: [IntentKind] = [
        IntentKind(name: "cancel", deviceOnly: false, templates: [
            "i want to cancel my {product} {item}",
            "please cancel the {item} for my {product}",
            "how do i cancel my {brand} {item}",
            "can you stop my {product} {item} from renewing",
            "i need to end my {item} with {brand}",
            "cancel my {brand} {noun} {item} effective today",
            "i no longer want the {item} on my {product}, cancel it",
        ]),
        IntentKind(name: "refund", deviceOnly: false, templates: [
            "i would like a refund for my {product}",
            "can i get my money back for the {brand} {noun}",
            "how long does a refund take for a {product} {item}",
            "i was charged twice for my {brand} {item}, please refund me",
            "refund the {brand} {item} i bought {time}",
            "where is my refund for {brand} order {number}",
            "i returned the {product} {time} and still have no refund",
        ]),
        IntentKind(name: "reset", deviceOnly: false, templates: [
            "how do i reset the {part} on my {product}",
            "i need to reset my {brand} {part}",
            "reset the {part} of my {product} to the default",
            "i forgot my {brand} {part}, how can i reset it",
            "what's the way to reset {part} for my {brand} {noun}",
            "can you help me reset the {part} on the {product}",
        ]),
        IntentKind(name: "upgrade", deviceOnly: false, templates: [
            "i want to upgrade my {product} {item}",
            "can i upgrade to the newest {brand} {model}",
            "how much does it cost to upgrade my {brand} {item}",
            "upgrade my {brand} {item} to the premium tier",
            "is there a better {brand} {noun} i can switch to",
            "i'd like to move my {product} to a higher {item}",
        ]),
        IntentKind(name: "status", deviceOnly: false, templates: [
            "what is the status of my {product} order",
            "has order {number} for the {brand} {noun} shipped yet",
            "check the status of my {brand} {item}",
            "is my {product} {item} still active",
            "any update on the {product} request i made {time}",
            "where is my {brand} {model} order",
        ]),
        IntentKind(name: "troubleshoot", deviceOnly: false, templates: [
            "my {product} {issue}",
            "help, my {brand} {noun} {issue}",
            "the {product} {issue} since {time}",
            "what should i do, my {product} {issue}",
            "why is it that my {brand} {noun} {issue}",
        ]),
        IntentKind(name: "billing", deviceOnly: false, templates: [
            "why is my {brand} bill higher this month",
            "i don't understand a charge from {brand} for my {item}",
            "when will i be billed for the {product} {item}",
            "can i change the payment date for my {brand} {item}",
            "there is an unknown {brand} charge on my statement",
        ]),
        IntentKind(name: "change_address", deviceOnly: false, templates: [
            "i moved, please update the address on my {brand} account",
            "change the delivery address for my {product} to {place}",
            "how do i update my address for the {brand} {item}",
            "send my {brand} {item} to {place} from now on",
        ]),
        IntentKind(name: "contact_agent", deviceOnly: false, templates: [
            "i want to talk to a person about my {product}",
            "can i speak with a {brand} agent",
            "connect me to someone from {brand} support",
            "is there a phone number for {brand} {noun} support",
            "get me a human, my {product} {issue}",
        ]),
        IntentKind(name: "delete_account", deviceOnly: false, templates: [
            "please delete my {brand} account and all my data",
            "how do i close my {brand} account for good",
            "remove my personal information from {brand}",
            "i want my {brand} {noun} account erased",
        ]),
        IntentKind(name: "warranty", deviceOnly: false, templates: [
            "is my {product} still under warranty",
            "how long is the warranty on a {brand} {noun}",
            "does the {brand} {item} cover accidental damage",
            "i want to make a warranty claim for my {product}",
            "what does the {brand} warranty cover",
        ]),
        IntentKind(name: "compare", deviceOnly: false, templates: [
            "what is the difference between the {brand} {model} and the {model}",
            "which {brand} {noun} is best for me",
            "compare the {brand} {item} options for me",
            "should i get the {brand} {model} or the {model}",
        ]),
        IntentKind(name: "return_item", deviceOnly: false, templates: [
            "how do i return my {product}",
            "i want to send back the {brand} {noun} i got {time}",
            "can i return a {product} after thirty days",
            "print a return label for my {brand} order {number}",
            "what is the {brand} return policy for the {item}",
        ]),
        IntentKind(name: "report_lost", deviceOnly: false, templates: [
            "i lost my {product}",
            "my {brand} {noun} was stolen {time}",
            "how do i block my {brand} {noun} after losing it",
            "report my {product} as lost please",
        ]),
        IntentKind(name: "pair_device", deviceOnly: true, templates: [
            "how do i connect my {product} to my phone",
            "my phone won't pair with the {brand} {noun}",
            "pair the {product} with the {brand} app",
            "what are the steps to link a {brand} {model} to bluetooth",
            "can i connect two phones to my {product}",
        ]),
        IntentKind(name: "update_firmware", deviceOnly: true, templates: [
            "how do i update the firmware on my {product}",
            "is there a software update for the {brand} {model}",
            "my {product} is stuck while updating",
            "install the latest {brand} update on my {noun}",
            "what changed in the new {brand} {noun} update",
        ]),
        IntentKind(name: "battery", deviceOnly: true, templates: [
            "the battery on my {product} drains too fast",
            "how long should the {brand} {model} battery last",
            "my {brand} {noun} battery won't hold a charge",
            "can i replace the battery in my {product}",
        ]),
        IntentKind(name: "setup", deviceOnly: true, templates: [
            "how do i set up my new {product}",
            "i just got a {brand} {noun}, where do i start",
            "help me install the {product} at {place}",
            "what do i need to set up the {brand} {model}",
        ]),
        IntentKind(name: "schedule", deviceOnly: true, templates: [
            "set my {product} to turn on at {clock}",
            "can the {brand} {noun} run on a schedule",
            "change the {brand} {part} schedule to {clock}",
            "turn off my {product} every day at {clock}",
        ]),
    ]
}
