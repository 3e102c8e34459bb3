"""Word rules for what the abuse model cannot see: self-harm, violence,
sexual content involving minors, and hate.

The profanity model knows swearing, not intent: "I don't want to live anymore"
has no bad word in it, and "kill the process" has one. These rules look for
phrases, not words. A threat needs a speaker and a person ("I'll kill you",
not "it wouldn't kill you"); self-harm needs the speaker's own life or body;
sexual/minors needs a sexual term and a minor in the same sentence; hate needs a
protected group and a dehumanising claim about it, or a slur.

Every rule runs on `normalise(text)`: lower case, straight apostrophes, runs of
three or more of one letter squeezed to one ("kiiiill" -> "kill"), leetspeak
digits between letters read as letters ("k1ll"), whitespace runs as one space.

Speed: Python's re tries every branch of an alternation at every position, so
each rule names the words it cannot match without (`needs`), and a rule runs only
when the text has one of them; a support question runs a handful of rules.

Bounded time: every gap between words is a bounded count of bounded words, so
no input makes the engine retry more than a few dozen steps from any position.
"""

from __future__ import annotations

import re
from bisect import bisect_left
from collections.abc import Iterator
from dataclasses import dataclass

SELF_HARM = "self-harm"
VIOLENCE = "violence"
SEXUAL_MINORS = "sexual/minors"
HATE = "hate"
# Not a category: mild expressions hidden from the abuse model (see _MILD).
MILD = "mild"


@dataclass(frozen=True)
class Hit:
    category: str
    start: int
    end: int
    # Hidden from the abuse model: it reads "kill" and "sex" as abuse, and a threat
    # or a self-harm statement already has its own, more precise category.
    masked: bool = True


@dataclass(frozen=True)
class Rule:
    category: str
    # Whole words (split at anything but a-z and 0-9) of which every match has one.
    needs: frozenset[str]
    pattern: re.Pattern[str]
    # A message the rule flags; tests check each rule against its own.
    example: str
    # The part of a match to hide from the abuse model.
    group: str | int = 0
    masked: bool = True


def _rule(
    category: str,
    needs: str,
    pattern: str,
    example: str,
    *,
    group: str | int = 0,
    masked: bool = True,
) -> Rule:
    return Rule(
        category,
        frozenset(needs.split()),
        re.compile(rf"\b(?:{pattern})"),
        example,
        group,
        masked,
    )


# --- normalisation ----------------------------------------------------------------

_APOSTROPHES = str.maketrans("\u2018\u2019\u02bc\u0060\u00b4", "'''''")
_LEET_MAP = str.maketrans("013457@$!|", "oieastasii")
_LEET_CHARS = frozenset("013457@$!|")
# Only between letters, so prices, dates, "14yo" and "mp3" keep their digits.
_LEET = re.compile(r"(?<=[a-z])[013457@$!|]{1,3}(?=[a-z])")
_REPEATS = re.compile(r"([a-z])\1{2,}")


def normalise(text: str) -> str:
    """The text the rules (and the abuse model, in offline.py) read."""
    text = text.lower().translate(_APOSTROPHES)
    if not _LEET_CHARS.isdisjoint(text):
        text = _LEET.sub(lambda m: m.group().translate(_LEET_MAP), text)
    text = _REPEATS.sub(r"\1", text)
    return " ".join(text.split())


# --- building blocks ----------------------------------------------------------------

# One word of filler; its bound keeps a long unbroken run from costing quadratic time.
_W = r"[a-z0-9*'-]{1,20}"

# Someone stating their own intent: the speaker of a threat.
_I_WILL = (
    r"(?:i(?:'ll| will| shall|'d| would| could| wanna| want to| am going to|'m going to"
    r"| am gonna|'m gonna|'m about to| am about to|'m coming to| am coming to)"
    r"|ill|im (?:going to|gonna|about to)|imma|ima|i'ma"
    r"|we(?:'ll| will|'re going to| are going to|'re gonna| are gonna)"
    r"|someone (?:should|will|needs to|ought to|is going to|is gonna)"
    r"|somebody (?:should|will|needs to))"
)

_PERSON_NOUN = (
    r"(?:agents?|staff|employees?|workers?|managers?|boss|ceo|owners?|team|people|family"
    r"|kids|children|wife|husband|son|daughter|drivers?|couriers?|reps?|representatives?"
    r"|guys?|man|woman|cashiers?|clerks?|technicians?|operators?|supervisors?|lady|dude"
    r"|person|support)"
)
_PERSON = (
    r"(?:you(?! to (?:it|the)\b)|u|ya|yall|y'all|you all|all of you|every one of you"
    r"|each of you|every last one of you|everyone|everybody|him|her|them"
    rf"|(?:your|ur|the|that|this|his|her|their) (?:{_W} )?{_PERSON_NOUN})\b"
)
_HARM_VERBS = (
    "kill murder stab strangle choke hurt harm beat punch slap attack assault rape behead "
    "butcher slaughter torture lynch bury execute end gut smash bash shoot"
)
_HARM_VERB = (
    r"(?:kill|murder|stab|strangle|choke|hurt|harm|beat(?: up)?|punch|slap|attack|assault"
    r"|rape|behead|butcher|slaughter|torture|lynch|bury|execute|end|gut|smash|bash"
    # "shoot you an email" is a promise to write.
    r"|shoot(?! (?:you|u|him|her|them|me) (?:an?|the|my|our|some|over|back|quick|it|this"
    r"|that|those|these|details|info)\b))"
)
_BODY = r"(?:face|head|skull|teeth|legs?|arms?|neck|jaw|nose|kneecaps?|throat|ribs)"

_PLACE = (
    rf"(?:your|ur|the|that|this|their) (?:{_W} )?(?:offices?|stores?|shops?|buildings?"
    r"|warehouses?|hq|headquarters|factory|branch|premises|school|call cent(?:re|er)s?"
    r"|company|business)\b"
)

# Protected groups, as people say them. "whites"/"blacks" are left out: in a laundry
# or printing question they are colours ("my whites are dirty").
_GROUP = (
    r"(?:jews|jewish people|muslims|islamists|christians|catholics|hindus|sikhs|buddhists"
    r"|black people|blacks|white people|asians|asian people|chinese people|indians"
    r"|pakistanis|arabs|africans|mexicans|latinos|latinas|hispanics|immigrants|migrants"
    r"|refugees|foreigners|gays|gay people|gay men|lesbians|homosexuals|queers|bisexuals"
    r"|trans people|transgender people|trans women|trans men|transsexuals|women|females"
    r"|disabled people|cripples|gypsies|roma)\b"
    # "I hate women's sizing" is about sizes: a possessive names the group's things.
    r"(?!')"
)
# The word of each _GROUP entry that is always there (the `needs` of group rules).
_GROUP_WORDS = (
    "jews jewish muslims islamists christians catholics hindus sikhs buddhists black blacks "
    "white asians asian chinese indians pakistanis arabs africans mexicans latinos latinas "
    "hispanics immigrants migrants refugees foreigners gays gay lesbians homosexuals queers "
    "bisexuals trans transgender transsexuals women females disabled cripples gypsies roma"
)
_GROUP_Q = rf"(?:(?:all|the|those|these|most|every|fucking|filthy|bloody) ){{0,2}}{_GROUP}"
_DEHUMANISE = (
    r"(?:animals|vermin|rats|cockroaches|roaches|parasites|pests|insects|subhuman|sub-human"
    r"|savages|filth|filthy|disgusting|scum|trash|garbage|a disease|a plague|a cancer"
    r"|a virus|inferior|not human|not people|monsters|terrorists|criminals|thieves|rapists"
    r"|pigs|dogs|apes|monkeys|freaks|mentally ill|evil|a burden|worthless|the problem"
    r"|less than human)\b"
)
_ELIMINATE = (
    r"(?:exterminated|wiped out|gassed|killed|shot|hanged|hung|put down|sterili[sz]ed"
    r"|eradicated|eliminated|deported|locked up|banned|burned|burnt|removed|expelled"
    r"|got rid of|gotten rid of|kicked out|thrown out|sent back)\b"
)
# One person named by the group: "a foreigner", "some immigrant".
_GROUP_ONE = (
    r"(?:a|an|some|this|that) (?:jew|muslim|black guy|black woman|asian|mexican|immigrant"
    r"|migrant|refugee|foreigner|arab|african|indian|pakistani|gay|lesbian|tranny|gypsy)"
)

# --- self-harm ----------------------------------------------------------------------

_SELF = r"(?:my ?self|meself|mysef)\b"
_SELF_WORDS = "myself self meself mysef"
# Accidents ("I cut myself on the packaging") are product complaints, not self-harm.
_NOT_ACCIDENT_BEFORE = r"(?<!almost )(?<!nearly )(?<!accidentally )(?<!accidently )"
_NOT_ACCIDENT_AFTER = (
    r"(?! (?:on|while|with|when|by accident|accidentally|opening|using|assembling"
    r"|shaving|cooking|cutting|unboxing|trying|in the kitchen)\b)"
)
# "I'd be happier if I was gone from your mailing list."
_NOT_FROM_A_LIST = r"(?! (?:from|off|out of)\b)"

_SELF_HARM_RULES = [
    _rule(
        SELF_HARM,
        _SELF_WORDS,
        r"(?:kill|killing|unalive|unaliving|off|offing|hang|hanging|drown|drowning|shoot"
        rf"|shooting|poison|poisoning|starve|starving) {_SELF}",
        "I want to kill myself",
    ),
    _rule(
        SELF_HARM,
        _SELF_WORDS,
        rf"{_NOT_ACCIDENT_BEFORE}(?:hurt|hurting|harm|harming|cut|cutting|burn|burning) "
        rf"{_SELF}{_NOT_ACCIDENT_AFTER}",
        "I've started hurting myself again",
    ),
    _rule(
        SELF_HARM,
        "cut cutting slit slitting slash slashing",
        rf"{_NOT_ACCIDENT_BEFORE}(?:cut|cutting|slit|slitting|slash|slashing) (?:my|his|her) "
        rf"(?:own )?(?:wrists?|arms?|legs?|thighs?|throat){_NOT_ACCIDENT_AFTER}",
        "I've been cutting my arms to cope",
    ),
    # Someone else's intent, reported by a friend or relative.
    _rule(
        SELF_HARM,
        "himself herself themselves themself",
        r"(?:kill|killing|unalive) (?:himself|herself|themselves|themself)",
        "my brother says he wants to kill himself",
    ),
    # "Suicide Squad" (a film) and suicide doors (a car part) are not ideation.
    _rule(
        SELF_HARM,
        "suicide suicidal",
        r"suicid(?:e|al)\b(?! squad| doors?)",
        "I've been thinking about suicide",
    ),
    _rule(
        SELF_HARM,
        "self selfharm selfharming selfinjury selfinjuring",
        r"self[- ]?(?:harm|harming|harmed|injury|injuring)\b",
        "I've been self-harming for months",
    ),
    _rule(SELF_HARM, "unalive", r"unalive\b", "i want to unalive"),
    _rule(
        SELF_HARM,
        "life",
        r"(?:end|ending|take|taking) (?:my|my own) life",
        "I'm thinking of ending my life",
    ),
    _rule(SELF_HARM, "all", r"(?:end|ending) it all", "I'm going to end it all tonight"),
    _rule(
        SELF_HARM,
        "die",
        r"i (?:just |really |honestly |simply |only |actually )?(?:want|wanna|wish|deserve) "
        r"(?:to )?die\b",
        "honestly I just want to die",
    ),
    _rule(
        SELF_HARM,
        "wish",
        r"i wish (?:i|i'd) (?:was|were|had) (?:dead|died|never been born)",
        "I wish I was dead",
    ),
    _rule(SELF_HARM, "dead", r"better off dead", "I'd be better off dead"),
    _rule(SELF_HARM, "without", r"better off without me", "everyone is better off without me"),
    # "Everyone would be happier if I was gone."
    _rule(
        SELF_HARM,
        "better happier easier",
        r"(?:better|happier|easier) (?:off )?(?:if|when|once) i(?:'m| am| was| were|'d be"
        r"| would be)? (?:gone|dead|not here|not around|no longer here|no longer around"
        rf"|didn'?t exist|never born){_NOT_FROM_A_LIST}",
        "everyone would be happier if I was gone",
    ),
    _rule(
        SELF_HARM,
        "disappear",
        r"(?:want|wanna|going|wish i could|need) to disappear (?:forever|for good|permanently)"
        rf"{_NOT_FROM_A_LIST}",
        "I want to disappear forever",
    ),
    # "Thinking about ending it with your company" is about a contract.
    _rule(
        SELF_HARM,
        "think thinking thought thoughts",
        r"(?:think|thinking|thought|thoughts) (?:about|of) (?:ending it|ending things"
        r"|ending everything|dying|not being here|not waking up)\b"
        r"(?! (?:with|early|now|here|today|for|on))",
        "sometimes I think about ending it",
    ),
    _rule(
        SELF_HARM,
        "live alive here exist wake",
        r"(?:don'?t|do not|no longer|never) (?:want|wanna|wish) to (?:live|be alive|be here"
        r"|exist|wake up)",
        "I don't want to live anymore",
    ),
    # "...point in living without coffee?" is a joke about coffee.
    _rule(
        SELF_HARM,
        "reason point purpose",
        r"(?:no|any|the|what'?s the) (?:reason|point|purpose) (?:to|in|of) (?:live|living|go on"
        r"|going on|being alive|staying alive|my life)\b(?! without)",
        "I don't see the point in living anymore",
    ),
    _rule(SELF_HARM, "live", r"nothing (?:left )?to live for", "I have nothing left to live for"),
    _rule(
        SELF_HARM,
        "worth",
        r"(?:life|living) (?:is(?:n'?t| not)|isnt|ain'?t) worth (?:it|living)",
        "life isn't worth living",
    ),
    _rule(
        SELF_HARM,
        "tired",
        r"tired of (?:living|being alive|life)",
        "I'm so tired of living",
    ),
    _rule(SELF_HARM, "done", r"done with (?:life|living)", "I am done with life"),
    _rule(
        SELF_HARM,
        "go going",
        r"can'?t (?:go on|keep going) (?:living|any ?more|like this any ?more)",
        "I can't go on anymore",
    ),
    _rule(
        SELF_HARM,
        "jump jumping",
        r"jump(?:ing)? (?:off|from|in front of) (?:a|the|my) (?:[a-z-]{1,20} )?(?:bridge"
        r"|building|roof|cliff|balcony|train|bus|tower|ledge)",
        "I'm going to jump off the bridge",
    ),
    _rule(
        SELF_HARM,
        "overdose overdosing",
        r"(?:i'?m|i am|i will|i'll|going to|gonna|want to|wanna|plan to|planning to|thinking "
        r"(?:about|of)|ready to) (?:[a-z]{1,12} )?overdos(?:e|ing)",
        "I'm going to overdose tonight",
    ),
    _rule(
        SELF_HARM,
        "pills tablets meds medication painkillers",
        r"(?:take|taking|swallow|swallowing) (?:all|every one) (?:of )?(?:my|the|these|those)? ?"
        r"(?:pills|tablets|meds|medication|sleeping pills|painkillers)",
        "tonight I'm going to take all my sleeping pills",
    ),
    _rule(SELF_HARM, "pills", r"pills (?:are )?ready", "I have the pills ready"),
    _rule(
        SELF_HARM,
        "note letter",
        r"(?:suicide|goodbye|farewell) (?:note|letter)",
        "I wrote a goodbye note to my family",
    ),
    _rule(
        SELF_HARM,
        "kms",
        r"(?:gonna|going to|want to|wanna|about to|i'll|i will|might|should) kms\b",
        "im gonna kms",
    ),
]

# --- violence -----------------------------------------------------------------------

# "This heater could burn the store down" is a complaint about a heater.
_NOT_HYPOTHETICAL = r"(?<!could )(?<!might )(?<!would )(?<!can )(?<!almost )(?<!nearly )"

_VIOLENCE_RULES = [
    # A speaker, up to six words ("literally", "fucking", "come to your store and"), a
    # harm verb, a person. Only the act is hidden from the abuse model, so the swearing
    # in "I'll fucking kill you" still counts as abuse.
    _rule(
        VIOLENCE,
        _HARM_VERBS + " hunt track find get",
        rf"{_I_WILL} (?:{_W} ){{0,6}}(?P<core>{_HARM_VERB} {_PERSON}"
        r"|(?:hunt|track) (?:you|u|him|her|them) down|(?:find|get) (?:you|u|ya) and)",
        "I'm going to come to your store and shoot everyone",
        group="core",
    ),
    # Body-part harm; "you'll break your neck on those stairs" is a warning.
    _rule(
        VIOLENCE,
        "break smash bash punch kick slit rip cave",
        r"(?<!you'll )(?<!could )(?<!might )(?<!not to )(?<!don't )(?:break|smash|bash|punch"
        rf"|kick|slit|rip|cave) (?:in )?(?:your|ur|his|her|their|the {_W}'s) {_BODY}",
        "I'll find your manager and break his legs",
    ),
    _rule(
        VIOLENCE,
        "shoot shooting",
        rf"(?:shoot|shooting) up {_PLACE}",
        "I'm going to shoot up your office",
    ),
    _rule(
        VIOLENCE,
        "bomb bombing blow blowing burn burning torch torching firebomb fire raze attack "
        "storm smash",
        rf"{_NOT_HYPOTHETICAL}(?:bomb|bombing|blow up|blowing up|burn down|burning down|torch"
        r"|torching|firebomb|set fire to|setting fire to|burn|raze|attack|storm|smash up) "
        rf"{_PLACE}",
        "I'm going to bomb your store",
    ),
    _rule(
        VIOLENCE,
        "burn burning blow blowing shoot shooting",
        rf"{_NOT_HYPOTHETICAL}(?:burn|burning|blow|blowing|shoot|shooting) {_PLACE} "
        r"(?:down|up)\b",
        "I'm going to burn your store down",
    ),
    _rule(
        VIOLENCE,
        "bomb bombs explosive explosives ied ieds",
        r"(?:there(?:'s| is| will be)|i(?:'ve| have)? (?:planted|placed|put|left|hidden|hid)"
        r"|we(?:'ve| have)? (?:planted|placed|put|left|hidden|hid)) an? (?:bomb|explosive"
        r"|explosive device|ied)s? (?:in|at|under|inside|outside|near)\b",
        "there's a bomb in your store",
    ),
    _rule(
        VIOLENCE,
        "know",
        r"i know where (?:you|u|ya) (?:live|work|sleep|park)\b",
        "I know where you live",
    ),
    _rule(
        VIOLENCE,
        "know",
        r"i know where your (?:family|kids|children|wife|husband|house|home|mother|mum|mom"
        r"|father|dad) (?:is|are|lives?|live|sleeps?)\b",
        "I know where your family lives",
    ),
    _rule(VIOLENCE, "watch", r"watch your back\b", "watch your back"),
    _rule(VIOLENCE, "eye", r"sleep with one eye open", "sleep with one eye open"),
    _rule(
        VIOLENCE,
        "dead",
        r"you(?:'re| are|r|re) (?:a )?dead (?:man|woman|meat|men)\b",
        "you're a dead man",
    ),
    _rule(
        VIOLENCE,
        "die",
        r"you(?:'re| are|r) (?:going to|gonna) die\b|you(?:'ll| will) die\b",
        "you're going to die",
    ),
    _rule(
        VIOLENCE,
        "coming",
        r"(?:i'?m|i am|we'?re|we are) coming for (?:you|u|ya|your)\b",
        "I'm coming for you",
    ),
    _rule(VIOLENCE, "bullet", r"deserves? (?:a|the) bullet", "your CEO deserves a bullet"),
    _rule(
        VIOLENCE,
        "bullet cap",
        r"(?:put|putting|pop|popping) (?:a )?(?:bullet|cap) in\b",
        "I'll put a bullet in him",
    ),
    _rule(
        VIOLENCE,
        "hospital ground grave coffin bag icu morgue",
        rf"(?:put|putting) (?:you|u|him|her|them|{_W} {_PERSON_NOUN}|(?:your|the|that) "
        rf"(?:{_W} )?{_PERSON_NOUN}) (?:in|into|to) (?:the |a )?(?:hospital|ground|grave|coffin"
        r"|body bag|icu|morgue)\b",
        "somebody needs to put your manager in the hospital",
    ),
    _rule(
        VIOLENCE,
        "burn blow explode flames bombed burned burnt",
        rf"{_PLACE} (?:will|is going to|is gonna|gonna|shall) (?:burn|blow up|explode"
        r"|go up in flames|be bombed|be burned|be burnt)\b(?! (?:through|out|up|off|into))",
        "your warehouse will burn",
    ),
    # "Whoever hangs up on me next gets stabbed": harm promised to whoever does something.
    _rule(
        VIOLENCE,
        "stabbed shot killed murdered hurt beaten beat strangled smacked punched",
        r"(?:whoever|anyone who|anybody who|the next (?:person|one|agent|driver|guy|courier"
        r"|employee)) (?:[a-z']{1,15} ){0,6}(?:gets?|will get|is gonna get|is going to get"
        r"|gonna get) (?:stabbed|shot|killed|murdered|hurt|beaten|beat up|strangled|smacked"
        r"|punched)\b",
        "the next person who hangs up on me gets stabbed",
    ),
    # Turning up armed. The verb follows the speaker directly, so "does it come with a
    # knife" and "I thought it would come with a knife" pass. A gun is a threat however
    # it is named; a knife only as "a knife", not "my knife set" brought back.
    _rule(
        VIOLENCE,
        "gun guns rifle shotgun pistol firearm bomb knife machete bat axe",
        r"(?:i|i'll|i will|ill|i'm|im|i am|we|we'll|we will|we're|we are) (?:going to |gonna "
        r"|about to |just |literally )?(?:come|coming|show up|showing up|turn up|turning up"
        r"|walk in|walking in|be there)(?: (?:down|over|back|round|around|in|here|there"
        r"|(?:to|at|into) (?:your|the|ur) [a-z]{1,20}|tomorrow|tonight|today)){0,3} with "
        r"(?:(?:a|an|my) (?:gun|guns|rifle|shotgun|pistol|firearm|bomb)|(?:a|an) (?:knife"
        r"|machete|baseball bat|bat|axe))\b(?![ -](?:set|block|sharpener|kit|case|holder|bag"
        r"|roll|stand|rack|sheath|organi[sz]er))",
        "I'll come down there with a gun",
    ),
    _rule(
        VIOLENCE,
        "bring",
        r"(?:i'll|i will|ill|i'm going to|im going to|i am going to|i'm gonna|im gonna) bring "
        r"(?:a|my|the) (?:gun|rifle|shotgun|pistol|firearm|bomb|explosives)\b"
        r"(?! (?:[a-z]{1,12} ){0,4}(?:for|to be) (?:a )?(?:repair|service|servicing|refund"
        r"|return|exchange|inspection))",
        "I'll bring my rifle to your office",
    ),
    _rule(
        VIOLENCE,
        "kill murder shoot gas exterminate slaughter",
        r"(?:kill|murder|shoot|gas|exterminate|slaughter) (?:all|every|each) (?:of )?(?:the )?"
        rf"(?:{_GROUP}|people\b|{_PERSON_NOUN}\b)",
        "kill all the people there",
    ),
]

# --- sexual content involving minors ----------------------------------------------------

# Sexual terms. Content ratings ("any sexual content? it's for my 10 year old"), sex
# education and same-sex parents are what parents ask a shop about, so they are out.
_SEXUAL_WORDS = frozenset(
    "sex sexual sexually sexualise sexualised sexualises sexualising sexualisation sexualize "
    "sexualized sexualizes sexualizing sexualization sexy sext sexts sexting porn porno "
    "pornos porns pornography pornographic nudes nude naked erotic erotica lewd molest "
    "molested molesting molester molesters molests molestation rape raped raping rapist "
    "explicit".split()
)
_SEXUAL = re.compile(
    r"(?<!same-)(?<!same )\b(?:sex(?! ?ed\b| ?education\b)|sexual(?:ly)?(?! (?:content|health"
    r"|education|harassment|orientation))|sexuali[sz](?:e|ed|es|ing|ation)|sexy|sext(?:s|ing)?"
    r"|porn(?:o|os|s|ography|ographic)?|nudes|nude (?:photo|pic|picture|image|video|selfie)s?"
    r"|naked|erotica?|lewd|molest(?:ed|ing|er|ers|s|ation)?|rape|raped|raping|rapist"
    r"|explicit (?:photo|pic|picture|image|video)s?)\b"
)
_MINOR = re.compile(
    r"\b(?:child|children|childs|kid|kids|kiddie|kiddies|kiddy|minors|a minor(?![ -][a-z])"
    r"|underage|under-age|under age|pre-?teens?|tweens?|toddlers?|infants?|teens?"
    r"|teenagers?|teenage|young (?:girls?|boys?|teens?)|little (?:girls?|boys?)"
    r"|school ?(?:girls?|boys?)|(?:[1-9]|1[0-7])(?: |-)?(?:year|yr)s?(?: |-)?old"
    r"|(?:[1-9]|1[0-7]) ?yo)\b"
)
# A sexual term and a minor this close, with no sentence break between them.
_PAIR_GAP = 60
# Longer than any _MINOR match, so a minor that ends within the gap is never skipped.
_LONGEST_MINOR = 30
_SENTENCE_BREAK = re.compile(r"[.!?;\n]")
# "My kids saw a porn ad on your homepage": a parent reporting what a child was shown.
_PARENT_BEFORE = re.compile(r"\b(?:my|our) $")
_PARENT_REPORT = re.compile(
    r"\b(?:saw|seen|see|sees|watched|found|came across|shown|exposed|got sent|received"
    r"|clicked)\b"
)

_MINORS_RULES = [
    _rule(
        SEXUAL_MINORS,
        "into attracted turned aroused fantasise fantasize fantasising fantasizing",
        r"(?:into|attracted to|turned on by|aroused by|fantasi[sz](?:e|ing) about) (?:young "
        r"(?:teens?|girls?|boys?)|little (?:girls?|boys?)|minors|underage|pre-?teens?)\b",
        "I'm into young teens",
    ),
    _rule(
        SEXUAL_MINORS,
        "attracted turned aroused",
        r"(?:attracted to|turned on by|aroused by) (?:kids|children)\b",
        "I'm attracted to children",
    ),
    _rule(SEXUAL_MINORS, "csam", r"csam\b", "any CSAM links?"),
    _rule(SEXUAL_MINORS, "jailbait", r"jailbait\b", "jailbait pics"),
    _rule(SEXUAL_MINORS, "lolicon shotacon", r"(?:lolicon|shotacon)\b", "lolicon"),
    _rule(
        SEXUAL_MINORS,
        "child kiddie",
        r"(?:child|kiddie) (?:porn(?:o|ography)?|sexual abuse|sex abuse)\b",
        "I'm looking for child porn",
    ),
    _rule(
        SEXUAL_MINORS,
        "groom grooming groomed grooms",
        r"groom(?:ing|ed|s)? (?:a |the )?(?:child|children|minor|minors|kid|kids|girl|girls|boy"
        r"|boys)\b",
        "how do I groom a child",
    ),
]

# --- hate ---------------------------------------------------------------------------------

_HATE_RULES = [
    # A moderation word list: slurs for protected groups, kept short on purpose. Words
    # with an everyday meaning ("chink" in armour, "fag" for a cigarette, "dyke" for a
    # dam) are left out; "spic and span" and "maine coon" are excluded in place. A
    # slur is abuse in itself, so the abuse model keeps seeing it.
    _rule(
        HATE,
        "nigger niggers nigga niggas niggah niggahs nigguh nigguhs faggot faggots fagot kike "
        "kikes spic spics wetback wetbacks raghead ragheads towelhead towelheads gook gooks "
        "paki pakis beaner beaners kaffir kaffirs tranny trannys trannies coon coons "
        "zipperhead zipperheads",
        r"(?:nigg(?:er|a|ah|uh)s?|faggots?|fagot|kikes?|spics?(?! (?:and|n|&) span)|wetbacks?"
        r"|ragheads?|towelheads?|gooks?|pakis?|beaners?|kaffirs?|trannys?|trannies"
        r"|(?<!maine )coons?|zipperheads?)\b",
        "your agent is a dirty paki",
        masked=False,
    ),
    _rule(
        HATE,
        _GROUP_WORDS,
        rf"{_GROUP_Q} (?:are|r|were|is) (?:(?:all|just|nothing but|like|basically|literally"
        rf"|such|a bunch of|so|fucking|bloody|dirty|disgusting|no better than) ){{0,3}}"
        rf"{_DEHUMANISE}",
        "immigrants are vermin",
    ),
    _rule(
        HATE,
        _GROUP_WORDS,
        rf"{_GROUP_Q} (?:should|must|need to|needs to|ought to) (?:all )?be {_ELIMINATE}",
        "gays should be locked up",
    ),
    _rule(
        HATE,
        _GROUP_WORDS,
        rf"{_GROUP_Q} (?:shouldn'?t|should not|don'?t|do not|dont) (?:be allowed to|deserve to) "
        r"(?:live|exist|breed|vote)\b",
        "Muslims shouldn't be allowed to live",
    ),
    _rule(
        HATE,
        _GROUP_WORDS,
        rf"(?:hate|despise|can'?t stand) (?:all )?(?:the |those |these )?{_GROUP}",
        "I hate Jews",
    ),
    _rule(
        HATE,
        _GROUP_WORDS,
        rf"(?:kill|gas|exterminate|deport|shoot|hang|burn|wipe out) (?:all )?(?:the |those "
        rf"|these )?{_GROUP}",
        "kill all the Mexicans",
    ),
    _rule(
        HATE,
        "country",
        r"go back to (?:your|their|ur) (?:own )?country\b(?! (?:page|selector|setting|list|menu"
        r"|site|tab))",
        "go back to your own country",
    ),
    # "...served by a foreigner, they are all criminals": the group named once, then "they".
    _rule(
        HATE,
        "they",
        rf"{_GROUP_ONE}\b[^.!?]{{0,40}}\bthey(?:'re| are| r) (?:all |just |like |such ){{0,2}}"
        rf"{_DEHUMANISE}",
        "I don't want a foreigner, they are all criminals",
    ),
    _rule(
        HATE,
        _GROUP_WORDS,
        rf"{_GROUP_Q} (?:control|run|own|controls|runs) (?:the )?(?:banks|media|world"
        r"|government|everything)\b",
        "Jews control the banks",
    ),
    _rule(
        HATE,
        _GROUP_WORDS,
        rf"{_GROUP_Q} (?:belong|belongs) (?:in the kitchen|in cages|in a cage|in the zoo"
        r"|in camps|in jail|in prison|in the gas)",
        "women belong in the kitchen",
    ),
]

# --- mild expressions ----------------------------------------------------------------

# Words the abuse model scores as abuse that, in these phrases, are aimed at a
# situation or at the speaker: "this is ridiculous" scores 0.93 and "sorry if this is
# a stupid question" 0.98. offline.py hides them before scoring; aimed at a person
# ("you're stupid", "go to hell", "damn you") they stay.
_THING = (
    r"(?:this|that|it|which|everything|the (?:app|site|website|service|update|checkout|page"
    r"|system|policy|process|form|bot|wait|delay|queue)|your (?:app|site|website|service"
    r"|update|checkout|page|system|policy|process|form|bot))"
)
_MILD_RULES = [
    _rule(
        MILD,
        "question",
        r"(?:stupid|dumb|silly|daft) question",
        "sorry if this is a stupid question",
    ),
    _rule(
        MILD,
        "ridiculous insane crazy absurd stupid dumb silly annoying joke nuts mad crap rubbish",
        rf"{_THING}(?:'s| is| was| has been| seems| sounds| feels| looks)? (?:so |really |just "
        r"|absolutely |totally |completely |pretty |utterly |actually )?(?:ridiculous|insane"
        r"|crazy|absurd|stupid|dumb|silly|annoying|a joke|nuts|mad|crap|rubbish)\b",
        "this is ridiculous",
    ),
    _rule(MILD, "sucks", rf"{_THING} (?:really |just |totally )?sucks\b", "this sucks"),
    _rule(
        MILD,
        "hell heck",
        r"(?:what|why|where|how|who|when) the (?:hell|heck)\b",
        "what the hell happened",
    ),
    _rule(MILD, "crap damn hell dear", r"(?:oh|aw|ah|ugh) (?:crap|damn|hell|dear)\b", "oh crap"),
    _rule(MILD, "dammit damnit damit", r"dam+n?it\b", "dammit"),
    _rule(MILD, "damn damned", r"damn(?:ed)?\b(?! (?:you|u|ya|them|him|her)\b)", "damn app"),
    # Hating a thing, not a person or a group ("I hate waiting", "I hate the colour").
    _rule(
        MILD,
        "hate",
        r"i (?:really |just |absolutely |honestly )?hate\b(?! (?:you|u|ya|y'all|yall|them|him"
        rf"|her|people|all|every|everyone|everybody|those|these|(?:your|the|that) (?:{_W} )?"
        rf"{_PERSON_NOUN})\b)(?! (?:the |those |these )?{_GROUP})",
        "I hate waiting",
    ),
    _rule(MILD, "money", r"shut up and take my money", "shut up and take my money"),
]

RULES: tuple[Rule, ...] = (
    *_SELF_HARM_RULES,
    *_VIOLENCE_RULES,
    *_MINORS_RULES,
    *_HATE_RULES,
    *_MILD_RULES,
)


def _index_by_word() -> dict[str, tuple[int, ...]]:
    by_word: dict[str, list[int]] = {}
    for index, rule in enumerate(RULES):
        for word in rule.needs:
            by_word.setdefault(word, []).append(index)
    return {word: tuple(indexes) for word, indexes in by_word.items()}


# Which rules each word can wake up.
_BY_WORD = _index_by_word()
_NOT_WORD = re.compile(r"[^a-z0-9]+")


def words(normalised: str) -> set[str]:
    """The words `needs` are matched against."""
    return set(_NOT_WORD.split(normalised))


# --- matching -------------------------------------------------------------------------------


def find(normalised: str) -> list[Hit]:
    """Every rule match in `normalised` (the output of normalise), mild
    expressions included (category MILD)."""
    present = words(normalised)
    candidates: set[int] = set()
    for word in present:
        indexes = _BY_WORD.get(word)
        if indexes:
            candidates.update(indexes)
    hits: list[Hit] = []
    for index in sorted(candidates):
        rule = RULES[index]
        for m in rule.pattern.finditer(normalised):
            start, end = m.span(rule.group)
            hits.append(Hit(rule.category, start, end, rule.masked))
    if not _SEXUAL_WORDS.isdisjoint(present):
        hits.extend(_minor_pairs(normalised))
    return hits


def _minor_pairs(text: str) -> Iterator[Hit]:
    sexual = [m.span() for m in _SEXUAL.finditer(text)]
    if not sexual:
        return
    minors = [m.span() for m in _MINOR.finditer(text)]
    starts = [start for start, _ in minors]
    for s_start, s_end in sexual:
        # Only the minors that can lie within the gap, so the work stays linear.
        first = bisect_left(starts, s_start - _PAIR_GAP - _LONGEST_MINOR)
        for m_start, m_end in minors[first:]:
            if m_start > s_end + _PAIR_GAP:
                break
            if m_end <= s_start:
                gap_start, gap_end = m_end, s_start
            elif s_end <= m_start:
                gap_start, gap_end = s_end, m_start
            else:
                continue
            if gap_end - gap_start > _PAIR_GAP:
                continue
            gap = text[gap_start:gap_end]
            if _SENTENCE_BREAK.search(gap):
                continue
            if m_end <= s_start and _parent_report(text, m_start, gap):
                continue
            yield Hit(SEXUAL_MINORS, s_start, s_end)
            yield Hit(SEXUAL_MINORS, m_start, m_end)
            break


def _parent_report(text: str, minor_start: int, gap: str) -> bool:
    before = text[max(0, minor_start - 5) : minor_start]
    return bool(_PARENT_BEFORE.search(before)) and bool(_PARENT_REPORT.search(gap))
