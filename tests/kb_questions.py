"""A labelled set for answering from the demo knowledge base (conversations/demo_kb).

Written by hand: visitor questions for the fictional Lumen desk lamp, each with the
slug of the one article that answers it (the file name without its "NN-" prefix and
".md"), or None when no article does. The answerable ones avoid the articles' title
words where that is natural, and include casual phrasing, typos, one-word-ish
questions, long ones with context, and a few that touch two topics with one clearly
primary. The unanswerable ones are plausible support questions on topics the help
centre leaves out; near misses (a topic an article mentions without answering the
question) are deliberate.
"""

from __future__ import annotations

QUESTIONS: list[tuple[str, str | None]] = [
    # Accounts: creating one
    ("how do i sign up for a lumen account?", "create-account"),
    ("never got the verification email after registering", "create-account"),
    (
        "I checked out as a guest last week. If I make an account now, will that order "
        "show up in it?",
        "create-account",
    ),
    # Password
    ("forgot my pasword", "reset-password"),
    ("the link to set a new password says it expired", "reset-password"),
    (
        "I'm not getting the reset email. I think I originally signed up with my Apple ID, "
        "does that matter?",
        "reset-password",
    ),
    # Email address
    ("I want to log in with a different email address", "change-email"),
    ("how do i update my e-mail on my profile", "change-email"),
    (
        "I'm leaving my job and will lose my work inbox, which is what my Lumen login uses. "
        "How do I move the account over to my gmail?",
        "change-email",
    ),
    # Two-factor authentication
    ("how do I turn on 2fa", "two-factor-authentication"),
    ("lost my phone and can't get the login codes anymore", "two-factor-authentication"),
    (
        "can I get sign-in codes by text instead of an authenticator app?",
        "two-factor-authentication",
    ),
    # Deleting the account
    ("please delete my account and all my data", "delete-account"),
    ("if I close my account can I undo it a few days later?", "delete-account"),
    ("what happens to my lamps if I get rid of my lumen account", "delete-account"),
    # Family sharing
    ("can my wife control the lamp from her phone too?", "family-sharing"),
    ("can my 14 year old son control the lamps in our home from his own phone?", "family-sharing"),
    ("the invite link I sent my brother doesn't work anymore", "family-sharing"),
    # Lumen Plus plans
    ("how much is lumen plus", "lumen-plus-plans"),
    ("is there a free trial for plus?", "lumen-plus-plans"),
    ("Do I need to pay every month just to use the lamp?", "lumen-plus-plans"),
    # Changing plan
    ("switch from monthly to yearly billing", "change-plan"),
    (
        "If I move to annual halfway through the month, do I lose what I already paid "
        "for this month?",
        "change-plan",
    ),
    ("I subscribed through the App Store, how do I switch to the family plan?", "change-plan"),
    # Cancelling
    ("cancel my subscribtion", "cancel-subscription"),
    ("I deleted the app but I'm still being charged every month for Plus", "cancel-subscription"),
    ("If I end Plus, do my extra schedules get deleted?", "cancel-subscription"),
    # Refunds
    (
        "can I get a refnd for my yearly plus? it renewed 3 days ago and I forgot to cancel",
        "refund-policy",
    ),
    ("how long does it take for a refund to show up on my credit card", "refund-policy"),
    ("I bought plus through google play and want my money back", "refund-policy"),
    (
        "I want to cancel Lumen Plus and also get my money back for this year, I was "
        "charged 5 days ago",
        "refund-policy",
    ),
    # Invoices and VAT
    ("where can I download an invoice for my order", "invoices-and-vat"),
    ("I need an invoice with my company's VAT number on it", "invoices-and-vat"),
    ("are your prices incl. vat?", "invoices-and-vat"),
    # Failed payments
    ("my card was declined when plus tried to renew", "failed-payments"),
    ("payment failed at checkout but my bank shows a pending charge", "failed-payments"),
    ("will I lose plus right away if my card expired?", "failed-payments"),
    # Payment methods
    ("can I pay with bitcoin?", "payment-methods"),
    ("Is Klarna available in France?", "payment-methods"),
    ("Can I pay by bank transfer for a big order for my office?", "payment-methods"),
    # Promo codes
    ("my promo code isnt working", "promo-codes"),
    ("I forgot to use my 10% newsletter code when I ordered yesterday", "promo-codes"),
    ("got a card in the box for 3 months free plus, how do I redeem it", "promo-codes"),
    # Shipping times and costs
    ("how long does shiping take to germany", "shipping-times-and-costs"),
    ("how much is delivery to the UK", "shipping-times-and-costs"),
    ("is shipping free?", "shipping-times-and-costs"),
    (
        "If I order at 3pm on a Friday, when does it leave the warehouse?",
        "shipping-times-and-costs",
    ),
    # Tracking
    ("where is my order", "track-order"),
    ("tracking link says no information available yet", "track-order"),
    ("what does 'processing' mean on my order", "track-order"),
    # International shipping and customs
    ("do you ship to canada?", "international-shipping"),
    ("Do you deliver to Brazil?", "international-shipping"),
    ("will the lamp work on 100V in japan", "international-shipping"),
    (
        "My parcel to Canada is held by DHL asking me for import fees. Is that right? I "
        "thought the shipping price covered everything. What happens if I just refuse it?",
        "international-shipping",
    ),
    # Changing or cancelling an order
    ("I put the wrong address on my order 20 minutes ago", "change-or-cancel-order"),
    ("cancel my order pls", "change-or-cancel-order"),
    ("can I add a second lamp to the order I placed this morning", "change-or-cancel-order"),
    (
        "I ordered 3 hours ago and changed my mind, is it too late to cancel?",
        "change-or-cancel-order",
    ),
    # Missing or damaged parcel
    ("tracking says delivered but there's nothing at my door", "missing-or-damaged-parcel"),
    ("the box arrived crushed and the lamp arm is bent", "missing-or-damaged-parcel"),
    ("You sent me the wrong item", "missing-or-damaged-parcel"),
    # Returns
    ("how do I send the lamp back, I don't like it", "returns"),
    ("can I swap my lamp for a different colour", "returns"),
    ("i bought it at an electronics store, can I return it to you?", "returns"),
    ("Before I send my lamp back, do I need to reset it? And how do I start it?", "returns"),
    # Warranty
    ("lamp stopped working after 8 months", "warranty-claim"),
    ("how long is the warranty", "warranty-claim"),
    ("I dropped my lamp and the head cracked, is that covered?", "warranty-claim"),
    ("can you send a replacement before I post my broken one back", "warranty-claim"),
    # Wi-Fi
    ("wifi not working", "wifi-connection"),
    ("the ring on my lamp is solid orange", "wifi-connection"),
    (
        "I can't get the lamp online in my uni dorm, the wifi there makes you log in on a "
        "web page first",
        "wifi-connection",
    ),
    (
        "I changed my wifi password yesterday and now my schedules don't run from the app and "
        "alexa says the lamp is unresponsive",
        "wifi-connection",
    ),
    # The app can't find the lamp
    ("the app doesn't find my lamp when I try to add it", "app-cant-find-lamp"),
    ("adding lamp on android, it just keeps searching forever", "app-cant-find-lamp"),
    ("what permissions does the iphone app need to discover the lamp", "app-cant-find-lamp"),
    # Flickering
    ("light keeps flickering", "flickering-light"),
    ("my lamp flickers when dimmed really low", "flickering-light"),
    ("can I power the lamp from my laptop's usb-c port?", "flickering-light"),
    ("do you sell a replacement power adapter", "flickering-light"),
    # Firmware
    ("how do I update the lamp software", "firmware-updates"),
    ("what's the latest firmware version", "firmware-updates"),
    ("update failed halfway and the light flashed amber", "firmware-updates"),
    # Factory reset
    ("how to factory reset the lamp", "factory-reset"),
    ("I'm selling my lamp, what should I do to it first?", "factory-reset"),
    ("if I wipe the lamp do I lose my schedules?", "factory-reset"),
    # Bluetooth
    ("can I use the lamp with no wifi at all?", "bluetooth-pairing"),
    ("how many phones can connect to one lamp over bluetooth", "bluetooth-pairing"),
    ("what's the bluetooth range", "bluetooth-pairing"),
    # Schedules and automations
    ("my morning schedule didn't turn the lamp on today", "schedules-not-running"),
    ("schedule runs an hour late since the clocks changed", "schedules-not-running"),
    ("the 'when I arrive home' routine never triggers", "schedules-not-running"),
    ("timer not working", "schedules-not-running"),
    # Voice assistants
    ("how do I connect the lamp to alexa", "voice-assistants"),
    ("does it work with google home", "voice-assistants"),
    ("does it work with siri?", "voice-assistants"),
    ("Alexa says the desk lamp is unresponsive", "voice-assistants"),
    # Contacting support
    ("what's your phone number", "contact-support"),
    ("How can I talk to a human?", "contact-support"),
    ("can I message you on instagram for help", "contact-support"),
    # No article answers these
    ("are you hiring?", None),
    ("r u guys hiring", None),
    ("do you sell replacement bulbs for other brands", None),
    ("Do you have a student discount?", None),
    ("how many lumens is the lamp", None),
    ("what is the colour temperature range of the light", None),
    ("Do you have a physical store in Amsterdam I can visit?", None),
    ("Can I buy a Lumen gift card?", None),
    ("does the lamp have a usb port to charge my phone", None),
    ("is there a wireless charging pad in the base?", None),
    ("Do you price match other shops?", None),
    ("Will you refund the difference if the price drops after I buy?", None),
    ("I own a shop, can I become a reseller of your lamps?", None),
    (
        "Hi, my office wants to buy 40 lamps for our new floor. Do you give volume discounts "
        "to businesses?",
        None,
    ),
    ("do you have an affiliate program", None),
    ("is the lamp CE certified?", None),
    ("is there a windows app to control the lamp from my pc", None),
    ("does the lamp work with IFTTT", None),
    ("Can I add the lamp to my Philips Hue app?", None),
    ("how do I recycle my old lamp", None),
    ("do you sell my data to advertisers", None),
    ("Where are the lamps made?", None),
    ("can I change the language of the app to spanish", None),
    ("Does the lamp have a built-in camera or microphone?", None),
    ("can I mount the lamp on a wall", None),
    ("When is the next Lumen model coming out?", None),
    ("what colours does the lamp come in", None),
    ("where can I leave a review", None),
    ("do you have a refer-a-friend scheme?", None),
    ("How do I export my usage history to a spreadsheet?", None),
    ("do you ship to PO boxes", None),
    ("can I pick up my order at your warehouse in Venlo instead of having it shipped", None),
    ("Can I buy Lumen Plus as a present for my sister?", None),
    ("do you have an API so I can control the lamp from my own code", None),
    ("how tall is the lamp and how much does it weigh", None),
    ("does it have a battery, can I use it without plugging it in", None),
    ("do you have a loyalty points programme", None),
]
