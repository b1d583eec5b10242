"""Generate the small training, validation and evaluation sets of the example DAGs.

The sets are written for the project, not downloaded: the customer-support inbox of Brightwave Home, a
(fictional) online shop for smart lighting. One list of questions and answers, by topic, feeds every
file, so that the files tell one story:

* ``support_train.jsonl`` / ``support_valid.jsonl``: supervised chat examples (system, user, assistant);
* ``support_preferences_train.jsonl`` / ``support_preferences_valid.jsonl``: DPO preference pairs, the
  good answer preferred to an unhelpful one;
* ``ticket_routing_train.jsonl`` / ``ticket_routing_valid.jsonl``: reinforcement fine-tuning items, a
  customer message and the topic it belongs to (``label``) for a ``string_check`` grader;
* ``support_eval.jsonl``: held-out chat requests, reworded from the questions, with a phrase the answer
  must hold (``expected``).

Deterministic: the same script writes the same bytes (a seeded shuffle, keys in a fixed order). Run it again after
changing the questions below::

    python example_dags/data/generate.py
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent
SEED = 2026

SYSTEM = (
    "You are Wave, the customer support assistant of Brightwave Home, an online shop for smart lighting. "
    "Answer in one to three friendly sentences and only state Brightwave policies you know."
)
ROUTING_INSTRUCTIONS = (
    "Route the customer's message to one support queue: shipping, returns, account, billing or technical. "
    "Answer with the queue name only, in lower case."
)

# (id, topic, question, answer)
FAQ: list[tuple[str, str, str, str]] = [
    # -- shipping
    (
        "s01",
        "shipping",
        "How long does standard shipping take?",
        "Standard shipping takes 3 to 5 business days within the continental US. You'll get a tracking link "
        "by email as soon as your order leaves our warehouse.",
    ),
    (
        "s02",
        "shipping",
        "Do you offer express delivery?",
        "Yes, express delivery arrives in 1 to 2 business days for $14.95. Choose it at checkout before 2 pm "
        "Eastern and the order ships the same day.",
    ),
    (
        "s03",
        "shipping",
        "Is shipping free?",
        "Shipping is free on orders over $50 in the US. Below that, standard shipping is a flat $5.95.",
    ),
    (
        "s04",
        "shipping",
        "I ordered five days ago and still haven't received a tracking number.",
        "I'm sorry for the wait! Tracking numbers are emailed within 24 hours of shipping, so please check your "
        "spam folder; if it isn't there, reply with your order number (it starts with BW-) and I'll look it up.",
    ),
    (
        "s05",
        "shipping",
        "Do you ship to Canada?",
        "Yes, we ship to Canada in 5 to 8 business days for a flat $12. Duties and taxes are collected at "
        "checkout, so there's nothing extra to pay on delivery.",
    ),
    (
        "s06",
        "shipping",
        "Can I change the shipping address after placing my order?",
        "You can change the address within 1 hour of ordering from Orders > Edit in your account. After that "
        "the order is being packed, so contact us and we'll ask the carrier to redirect it.",
    ),
    (
        "s07",
        "shipping",
        "My package says delivered but it's not here.",
        "Please check with your neighbours and around your entrance, as carriers sometimes leave parcels out of "
        "sight. If it hasn't turned up after 48 hours, tell us and we'll open a claim and send a replacement.",
    ),
    (
        "s08",
        "shipping",
        "Can I pick up my order in person?",
        "We don't have a pickup counter: every order ships from our warehouse in Columbus, Ohio. Express "
        "delivery is the fastest way to get your lights.",
    ),
    (
        "s09",
        "shipping",
        "Do you ship to Europe or the UK?",
        "Not yet: we currently ship to the US and Canada only. We're working on the UK and the EU for next year.",
    ),
    (
        "s10",
        "shipping",
        "Why was my order split into two packages?",
        "Large orders sometimes ship from two warehouse zones to reach you faster. Each package has its own "
        "tracking link, and you don't pay extra shipping.",
    ),
    (
        "s11",
        "shipping",
        "Can I choose the day my package is delivered?",
        "Carriers don't let us pick a delivery day, but the tracking link lets you hold the package at a "
        "nearby pickup point or choose a safe drop-off spot.",
    ),
    # -- returns
    (
        "r01",
        "returns",
        "What is your return policy?",
        "You can return any item within 30 days of delivery for a full refund, as long as it's in its original "
        "packaging. Start a return from Orders > Return in your account.",
    ),
    (
        "r02",
        "returns",
        "Do I have to pay for return shipping?",
        "Returns are free: we email you a prepaid return label. The only exception is opened clearance items, "
        "where the $5.95 label is deducted from the refund.",
    ),
    (
        "r03",
        "returns",
        "How long does it take to get my refund?",
        "Refunds are issued within 3 business days of your return reaching our warehouse. Your bank may take "
        "another 5 to 7 business days to show it.",
    ),
    (
        "r04",
        "returns",
        "One of my bulbs arrived broken.",
        "I'm sorry about that! Send us a photo through Orders > Report a problem and we'll ship a free "
        "replacement right away; there's no need to return the broken bulb.",
    ),
    (
        "r05",
        "returns",
        "Can I exchange a bulb for a different color temperature?",
        "Yes, exchanges are free within 30 days. Start a return, pick Exchange as the reason and choose the new "
        "product; we ship it as soon as the carrier scans your return.",
    ),
    (
        "r06",
        "returns",
        "I lost the original box. Can I still return my light strip?",
        "Yes, you can still return it within 30 days; just pack it securely in any box. Items returned without "
        "their original packaging get a 10% restocking fee.",
    ),
    (
        "r07",
        "returns",
        "Can I return a product after 30 days?",
        "After 30 days we can't take a regular return, but every Brightwave product has a 2-year warranty: if "
        "it's faulty, we'll repair or replace it.",
    ),
    (
        "r08",
        "returns",
        "I received Brightwave lights as a gift. Can I return them?",
        "Yes, gift returns are welcome within 30 days. Enter the gift receipt number at "
        "brightwave.example/returns and the refund goes to you as store credit.",
    ),
    (
        "r09",
        "returns",
        "Can I cancel my order?",
        "You can cancel within 1 hour of ordering from Orders > Cancel in your account. After that the order is "
        "packed, so you'd return it once it arrives; returns are free.",
    ),
    (
        "r10",
        "returns",
        "Where do I send my return?",
        "Use the prepaid label we email you: it's addressed to our returns center in Columbus, Ohio. Drop the "
        "package at any UPS location.",
    ),
    # -- account
    (
        "a01",
        "account",
        "How do I reset my password?",
        "Click Forgot password on the sign-in page and enter your email; we'll send a reset link that's valid "
        "for 30 minutes. Check your spam folder if it doesn't arrive within a few minutes.",
    ),
    (
        "a02",
        "account",
        "How do I change the email address on my account?",
        "Go to Account > Profile, choose Change email, and confirm the new address from the link we send to it. "
        "Your orders and devices stay linked to the account.",
    ),
    (
        "a03",
        "account",
        "How can I delete my account?",
        "Go to Account > Privacy and choose Delete account. We erase your data within 30 days; your lights keep "
        "working from the wall switch but lose app and voice control.",
    ),
    (
        "a04",
        "account",
        "Can I share control of my lights with my family?",
        "Yes: in the Brightwave app, open Home > Members and invite them by email. Members can control the "
        "lights but can't remove devices or change billing.",
    ),
    (
        "a05",
        "account",
        "I'm not receiving the verification email.",
        "Verification emails can take up to 10 minutes, so please check your spam folder first. If it still "
        "hasn't arrived, tap Resend on the sign-in screen or contact us to verify you manually.",
    ),
    (
        "a06",
        "account",
        "How do I turn on two-factor authentication?",
        "Open Account > Security and turn on Two-factor authentication. You can receive the codes in an "
        "authenticator app or by text message.",
    ),
    (
        "a07",
        "account",
        "How do I stop getting marketing emails?",
        "Click Unsubscribe at the bottom of any marketing email, or turn off Newsletters in Account > "
        "Notifications. You'll still receive order and security emails.",
    ),
    (
        "a08",
        "account",
        "I think someone else logged into my account.",
        "Please reset your password right away and turn on two-factor authentication in Account > Security. "
        "Then contact us so we can sign out every session and review recent orders with you.",
    ),
    (
        "a09",
        "account",
        "Can I have two accounts with the same email?",
        "No, each email address holds one Brightwave account. You can invite other people to your home as "
        "members instead.",
    ),
    (
        "a10",
        "account",
        "How do I download my personal data?",
        "Go to Account > Privacy and choose Download my data. We email you a link to a ZIP file within 48 hours.",
    ),
    # -- billing
    (
        "b01",
        "billing",
        "Which payment methods do you accept?",
        "We accept Visa, Mastercard, American Express, PayPal, Apple Pay and Google Pay. Brightwave gift cards "
        "can be combined with any of them.",
    ),
    (
        "b02",
        "billing",
        "I was charged twice for my order.",
        "I'm sorry about that! The second charge is usually a temporary authorization that disappears within 3 "
        "business days. If it's still there after that, send us your order number and we'll refund it.",
    ),
    (
        "b03",
        "billing",
        "Can I get an invoice with my company name?",
        "Yes: add your company name and tax ID in the billing details, then download the PDF invoice from "
        "Orders > Invoice.",
    ),
    (
        "b04",
        "billing",
        "Can I pay in installments?",
        "Yes, orders over $150 can be split into 4 interest-free payments with Klarna at checkout.",
    ),
    (
        "b05",
        "billing",
        "How do I use a discount code?",
        "Enter the code in the Promo code box on the checkout page and click Apply. One code can be used per order.",
    ),
    (
        "b06",
        "billing",
        "My discount code isn't working.",
        "Codes are case-sensitive and can't be combined with sale prices or other codes. If yours hasn't "
        "expired, send it to us and we'll apply the discount for you.",
    ),
    (
        "b07",
        "billing",
        "How much does Brightwave Plus cost?",
        "Brightwave Plus costs $3.99 per month or $39 per year. It adds away-from-home automations, 90 days of "
        "energy history and priority support.",
    ),
    (
        "b08",
        "billing",
        "How do I cancel my Brightwave Plus subscription?",
        "Open Account > Subscription and choose Cancel Brightwave Plus. You keep the Plus features until the "
        "end of the period you already paid for.",
    ),
    (
        "b09",
        "billing",
        "Why was my card declined?",
        "Declines usually come from a billing address that doesn't match the card, or from your bank's fraud "
        "checks. Check the address at checkout, or ask your bank to approve the payment and try again.",
    ),
    (
        "b10",
        "billing",
        "Do you price match?",
        "We match the price of any authorized US retailer within 14 days of your purchase. Send us a link to "
        "the lower price and your order number, and we'll refund the difference.",
    ),
    # -- technical
    (
        "t01",
        "technical",
        "My smart bulb won't connect to Wi-Fi.",
        "Brightwave bulbs only connect to 2.4 GHz Wi-Fi, so keep your phone on the 2.4 GHz network during "
        "setup. Then reset the bulb by switching it off and on five times until it blinks.",
    ),
    (
        "t02",
        "technical",
        "How do I reset a Brightwave bulb?",
        "Switch the bulb off and on five times in a row, about a second apart. It blinks three times when the "
        "reset is done and can be added in the app again.",
    ),
    (
        "t03",
        "technical",
        "Do your lights work with Alexa?",
        "Yes, Brightwave works with Amazon Alexa, Google Home and Apple Home. In the Alexa app, enable the "
        "Brightwave skill and sign in with your Brightwave account.",
    ),
    (
        "t04",
        "technical",
        "Do I need a hub for the bulbs?",
        "No hub is needed: Brightwave bulbs connect straight to your Wi-Fi. The Brightwave Bridge is only "
        "required for the Zigbee outdoor range.",
    ),
    (
        "t05",
        "technical",
        "My light strip keeps flickering.",
        "Flickering usually comes from a loose connector or an underpowered adapter. Reseat the strip in its "
        "connector and use the 24 V adapter from the box; if it still flickers, we'll replace it under warranty.",
    ),
    (
        "t06",
        "technical",
        "The app says my bulb is offline.",
        "Check that the wall switch is on and your router is working, since bulbs go offline without power or "
        "Wi-Fi. If it stays offline, remove the bulb in the app and set it up again.",
    ),
    (
        "t07",
        "technical",
        "How do I update the firmware of my lights?",
        "Firmware updates install automatically at night while the lights are off. To update now, open the bulb "
        "in the app and tap Settings > Firmware > Update.",
    ),
    (
        "t08",
        "technical",
        "Can I use Brightwave bulbs with a dimmer switch?",
        "Please don't put smart bulbs on a wall dimmer: it can make them flicker or fail. Leave the switch at "
        "full power and dim from the app or a Brightwave smart switch.",
    ),
    (
        "t09",
        "technical",
        "How do I set a schedule for my lights?",
        "In the app, open Automations, tap New schedule, then pick the lights, the time and the days. Schedules "
        "run even when your phone is off.",
    ),
    (
        "t10",
        "technical",
        "Are the outdoor lights waterproof?",
        "Yes, the outdoor range is rated IP65: it's protected against rain and water jets, but it must not be "
        "submerged.",
    ),
    (
        "t11",
        "technical",
        "How many bulbs can I connect to one account?",
        "One home in the app holds up to 50 devices. If you have more, create a second home for another floor "
        "or building.",
    ),
]

# Answers a support assistant should not give: vague, deflecting or curt. DPO learns to prefer the real
# answer to one of these.
UNHELPFUL: dict[str, list[str]] = {
    "shipping": [
        "Shipping times depend on the carrier, so I can't really say.",
        "Please check the carrier's website for that.",
        "All shipping information is on our website.",
    ],
    "returns": [
        "Returns are handled case by case. Please email us.",
        "You'll have to read the terms and conditions for that.",
        "I can't help with returns here.",
    ],
    "account": [
        "Please look in your account settings.",
        "That's an account issue; try logging out and in again.",
        "I don't have access to accounts, sorry.",
    ],
    "billing": [
        "Please contact your bank about payments.",
        "Billing questions are answered in the FAQ.",
        "I can't discuss payments.",
    ],
    "technical": [
        "Have you tried turning it off and on again?",
        "Technical issues are usually on your side. Check your setup.",
        "Please read the manual that came in the box.",
    ],
}

# Held-out evaluation: questions reworded (not copied) from the training set, with a phrase the answer
# must contain, and one question whose answer only the validation set holds (a fair miss).
EVAL: list[tuple[str, str, str]] = [
    ("s01", "How long does standard shipping usually take?", "3 to 5 business days"),
    ("r01", "What's your return policy?", "30 days"),
    ("a01", "How can I reset my password?", "Forgot password"),
    ("b01", "Which payment methods do you take?", "PayPal"),
    ("t01", "My smart bulb won't connect to my Wi-Fi.", "2.4 GHz"),
    ("b10", "Will you match a lower price from another store?", "14 days"),
]
# Questions the evaluation expects the model to have learnt (training split) or not (validation split).
ALWAYS_TRAIN = {"s01", "r01", "a01", "b01", "t01"}
ALWAYS_VALID = {"b10"}
SUPERVISED_VALID = 12
PREFERENCE_TRAIN, PREFERENCE_VALID = 24, 10
ROUTING_TRAIN, ROUTING_VALID = 24, 10


def supervised(question: str, answer: str) -> dict[str, Any]:
    return {
        "messages": [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": question},
            {"role": "assistant", "content": answer},
        ]
    }


def preference(question: str, answer: str, unhelpful: str) -> dict[str, Any]:
    return {
        "input": {"messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]},
        "preferred_output": [{"role": "assistant", "content": answer}],
        "non_preferred_output": [{"role": "assistant", "content": unhelpful}],
    }


def routing(item_id: str, question: str, topic: str) -> dict[str, Any]:
    return {
        "messages": [
            {"role": "developer", "content": ROUTING_INSTRUCTIONS},
            {"role": "user", "content": question},
        ],
        "label": topic,
        "ticket_id": f"BW-T-{item_id.upper()}",
    }


def write(name: str, rows: Iterable[dict[str, Any]]) -> None:
    text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    (HERE / name).write_text(text, encoding="utf-8")
    print(f"{name}: {text.count(chr(10))} lines, {len(text.encode())} bytes")


def main() -> None:
    rng = random.Random(SEED)
    by_id = {item[0]: item for item in FAQ}

    # Supervised: a validation set spread over the topics, holding the questions the evaluation must miss.
    free = [item_id for item_id in by_id if item_id not in ALWAYS_TRAIN | ALWAYS_VALID]
    rng.shuffle(free)
    valid_ids = sorted(ALWAYS_VALID | set(free[: SUPERVISED_VALID - len(ALWAYS_VALID)]))
    train_ids = [item_id for item_id in by_id if item_id not in valid_ids]
    rng.shuffle(train_ids)
    write("support_train.jsonl", (supervised(*by_id[i][2:]) for i in train_ids))
    write("support_valid.jsonl", (supervised(*by_id[i][2:]) for i in valid_ids))

    # DPO: preference pairs on a sample of the questions, each answer preferred to an unhelpful one.
    sample = rng.sample(list(by_id), PREFERENCE_TRAIN + PREFERENCE_VALID)
    pairs = [preference(by_id[i][2], by_id[i][3], rng.choice(UNHELPFUL[by_id[i][1]])) for i in sample]
    write("support_preferences_train.jsonl", pairs[:PREFERENCE_TRAIN])
    write("support_preferences_valid.jsonl", pairs[PREFERENCE_TRAIN:])

    # Reinforcement: route a customer's message to its queue; the grader compares the answer with the label.
    sample = rng.sample(list(by_id), ROUTING_TRAIN + ROUTING_VALID)
    items = [routing(i, by_id[i][2], by_id[i][1]) for i in sample]
    write("ticket_routing_train.jsonl", items[:ROUTING_TRAIN])
    write("ticket_routing_valid.jsonl", items[ROUTING_TRAIN:])

    write(
        "support_eval.jsonl",
        (
            {
                "id": f"eval-{n:02d}",
                "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": prompt}],
                "expected": expected,
            }
            for n, (_, prompt, expected) in enumerate(EVAL, 1)
        ),
    )


if __name__ == "__main__":
    main()
