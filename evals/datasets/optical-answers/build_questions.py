"""Writes questions.jsonl: kept as a script so each question sits beside its facts, readable.

Every fact is a short string that a correct answer must contain (case and spacing ignored);
a fact given as a list is satisfied by any one of its spellings. `document` is the file
that holds the facts (relative to samples/<company>/). Run: python build_questions.py
"""

from __future__ import annotations

import json
from pathlib import Path

B, C = "brightsight-optical", "clearview-eyecare"

# (company, type, question, facts, document)
SINGLE: list[tuple[str, str, str, list, str]] = [
    # --- prices -----------------------------------------------------------------------------------
    (B, "price", "What do progressive lenses cost?", ["£189"], "price-list-2026.pdf"),
    (C, "price", "What do progressive lenses cost?", ["£249"], "price-list-2026.md"),
    (B, "price", "How much are children's bifocal or varifocal lenses?", ["£95"], "price-list-2026.pdf"),
    (C, "price", "How much are children's bifocal or varifocal lenses?", ["£140"], "price-list-2026.md"),
    (B, "price", "What do we charge for children's single vision lenses?", ["£35"], "price-list-2026.pdf"),
    (C, "price", "What do we charge for children's single vision lenses?", ["£49"], "price-list-2026.md"),
    (B, "price", "How much is an adult eye test?", ["£25"], "price-list-2026.pdf"),
    (C, "price", "How much is an adult eye test?", ["£39"], "price-list-2026.md"),
    (B, "price", "Do children pay for eye examinations?", ["free"], "childrens-eye-exams.md"),
    (C, "price", "How much is a child's eye examination?", ["£20"], "paediatric-eye-examinations.md"),
    (B, "price", "What is the contact lens trial fee?", ["£30"], "contact-lens-fitting-and-lens-care-plan.md"),
    (C, "price", "What is the contact lens trial fee?", ["£45"], "contact-lens-services.md"),
    (B, "price", "How much is anti-reflective coating?", ["£35"], "price-list-2026.pdf"),
    (C, "price", "How much is anti-reflective coating?", ["£45"], "price-list-2026.md"),
    (B, "price", "What does the blue light filter cost?", ["£40"], "price-list-2026.pdf"),
    (C, "price", "What does the blue light filter cost?", ["£55"], "price-list-2026.md"),
    (B, "price", "How much extra are photochromic lenses?", ["£60"], "lens-coatings.md"),
    (C, "price", "How much extra are photochromic lenses?", ["£79"], "lens-coatings-and-treatments.md"),
    (B, "price", "Do we charge for a scratch-resistant coating?", [["free", "no extra charge"]], "lens-coatings.md"),
    (C, "price", "Do we charge for a scratch-resistant coating?", ["£20"], "lens-coatings-and-treatments.md"),
    (B, "price", "How much are single vision lenses?", ["£49"], "lens-types-guide.md"),
    (C, "price", "How much are single vision lenses?", ["£65"], "spectacle-lens-guide.md"),
    (B, "price", "What is the starting price for bifocals?", ["£99"], "lens-types-guide.md"),
    (C, "price", "What is the starting price for bifocals?", ["£129"], "spectacle-lens-guide.md"),
    (B, "price", "What is the monthly fee for MiSight 1 day?", ["£45"], "myopia-control-children.md"),
    (C, "price", "What is the monthly fee for MiSight 1 day?", ["£52"], "myopia-management-programme.md"),
    (B, "price", "How much per month is orthokeratology?", ["£60"], "myopia-control-children.md"),
    (C, "price", "How much per month is ortho-k?", ["£69"], "myopia-management-programme.md"),
    (B, "price", "What does the low-dose atropine programme cost a month?", ["£25"], "myopia-control-children.md"),
    (C, "price", "What does the atropine plan cost a month?", ["£30"], "myopia-management-programme.md"),
    (B, "price", "How much is a dry eye assessment?", ["£35"], "dry-eye-clinic.md"),
    (C, "price", "How much is a dry eye assessment?", ["£55"], "dry-eye-service.md"),
    (B, "price", "How much is accidental damage cover for glasses?", ["£20"], "returns-remakes-and-warranty.md"),
    (C, "price", "How much is accidental damage cover for glasses?", ["£29"], "returns-remakes-and-warranty.md"),
    (B, "price", "Do we charge to adjust frames bought elsewhere?", ["£5"], "frame-fitting-and-adjustments.md"),
    (C, "price", "Do we charge to adjust frames bought elsewhere?", ["free"], "frame-fitting-and-adjustments.md"),
    (C, "price", "How much are the ClearFocus Elite varifocals?", ["£449"], "price-list-2026.md"),
    (B, "price", "What is the price of the Advance freeform progressive?", ["£289"], "price-list-2026.pdf"),
    # --- policies ---------------------------------------------------------------------------------
    (B, "policy", "How much notice do patients need to give to cancel?", ["24 hours"],
     "appointments-and-cancellations.md"),
    (C, "policy", "How much notice do patients need to give to cancel?", ["48 hours"],
     "appointment-cancellation-and-no-show-policy.md"),
    (B, "policy", "What is the no-show fee?", ["£15"], "appointments-and-cancellations.md"),
    (C, "policy", "What is the no-show fee?", ["£30"], "appointment-cancellation-and-no-show-policy.md"),
    (B, "policy", "How late can a patient be before we rebook them?", ["10 minutes"],
     "appointments-and-cancellations.md"),
    (C, "policy", "How late can a patient be before we rebook them?", ["15 minutes"],
     "appointment-cancellation-and-no-show-policy.md"),
    (B, "policy", "How long does a patient have to return their glasses?", ["30 days"],
     "returns-remakes-and-warranty.md"),
    (C, "policy", "How long does a patient have to return their glasses?", ["60 days"],
     "warranty-and-aftercare-policy.pdf"),
    (B, "policy", "How long is the frame warranty?", [["12-month", "12 months"]], "returns-remakes-and-warranty.md"),
    (C, "policy", "How long is the frame warranty?", [["24 months", "24-month"]], "warranty-and-aftercare-policy.pdf"),
    (B, "policy", "How long is the non-adapt guarantee on varifocals?", [["60-day", "60 days"]],
     "progressive-lens-adaptation.md"),
    (C, "policy", "How long is the non-adapt guarantee on varifocals?", [["90-day", "90 days"]],
     "warranty-and-aftercare-policy.pdf"),
    (B, "policy", "How often are children on the myopia programme reviewed?", [["6 months", "six months"]],
     "myopia-control-children.md"),
    (C, "policy", "How often are children on the myopia programme reviewed?", [["4 months", "four months"]],
     "myopia-management-programme.md"),
    (B, "policy", "What is our phone number?", ["01632 960418"], "about-us-and-contact.md"),
    (C, "policy", "What is our main phone number?", ["01632 960772"], "locations-and-opening-hours.md"),
    (B, "policy", "What is the practice address?", ["14 Market Row"], "about-us-and-contact.md"),
    (C, "policy", "What is the address of the Bridge Street practice?", ["82 Bridge Street"],
     "locations-and-opening-hours.md"),
    (B, "policy", "What are our weekday opening hours?", ["9:00 to 17:30"], "about-us-and-contact.md"),
    (C, "policy", "What are the Bridge Street weekday opening hours?", ["8:30 to 18:00"],
     "locations-and-opening-hours.md"),
    (B, "policy", "Are we open on Saturdays?", ["9:00 to 13:00"], "about-us-and-contact.md"),
    (C, "policy", "Which practice is open on Sundays?", ["Riverside", "10:00 to 16:00"],
     "patient-services-call-handling-guide.txt"),
    (B, "policy", "What is the practice email address?", ["hello@brightsight-optical.example"],
     "about-us-and-contact.md"),
    (C, "policy", "What email address do patients write to?", ["info@clearview-eyecare.example"],
     "locations-and-opening-hours.md"),
    # --- clinical protocols -----------------------------------------------------------------------
    (B, "clinical", "Where do we refer suspected glaucoma?", ["Harrow Vale General Hospital"],
     "glaucoma-diabetic-referral-protocol.txt"),
    (C, "clinical", "Where do we send hospital eye referrals?", ["Kingsbridge Royal Infirmary"],
     "glaucoma-and-diabetic-referral-pathway.txt"),
    (B, "clinical", "A caller reports new flashes and floaters. What should reception do?",
     [["same day", "emergency slot"]], "reception-telephone-guide.txt"),
    (C, "clinical", "How quickly must a patient with new flashes or floaters be seen?",
     [["same day", "24 hours"]], "clinical-governance-and-protocols-handbook.md"),
    (B, "clinical", "At what GAT pressure do we refer routinely for glaucoma?", ["24 mmHg"],
     "glaucoma-diabetic-referral-protocol.txt"),
    (C, "clinical", "At what GAT IOP do we make a routine glaucoma referral?", ["24 mmHg"],
     "glaucoma-and-diabetic-referral-pathway.txt"),
    (B, "clinical", "Which drops do we use to dilate?", ["tropicamide 1%"], "clinical-protocols-handbook.md"),
    (C, "clinical", "What do we dilate diabetic patients with?", ["tropicamide 1%"],
     "glaucoma-and-diabetic-referral-pathway.txt"),
    (B, "clinical", "What is the minimum fitting height for a standard progressive?", ["17 mm"],
     "staff-lens-dispensing-manual.md"),
    (C, "clinical", "What is the minimum fitting height for a standard varifocal?", ["18 mm"],
     "dispensing-standards-manual.md"),
    (B, "clinical", "What do we do if a patient has sudden loss of vision?", [["same day", "telephone"]],
     "clinical-protocols-handbook.md"),
    (C, "clinical", "What do we do for suspected giant cell arteritis?", [["same day", "immediately"]],
     "clinical-governance-and-protocols-handbook.md"),
    (B, "clinical", "How long after dilation should patients not drive?", [["4–6 hours", "4-6 hours"]],
     "clinical-protocols-handbook.md"),
    (C, "clinical", "How often are diabetic patients examined?", [["every 12 months", "12 months"]],
     "glaucoma-and-diabetic-referral-pathway.txt"),
    # --- table look-ups ---------------------------------------------------------------------------
    (B, "table", "How long is a contact lens trial and fitting appointment?", ["45 minutes"],
     "appointments-and-cancellations.md"),
    (B, "table", "What is the recall interval for adults 70 and over?", ["1 year"], "clinical-protocols-handbook.md"),
    (B, "table", "What recall do children in the myopia control programme get?", ["6 months"],
     "clinical-protocols-handbook.md"),
    (C, "table", "How much are designer frames?", ["£150", "£320"], "price-list-2026.md"),
    (C, "table", "How much is an RGP fitting?", ["£95"], "price-list-2026.md"),
    (C, "table", "What does the ClearCare Complete bundle cost?", ["£59"], "price-list-2026.md"),
    (B, "table", "How much is a course of four IPL sessions?", ["£280"], "price-list-2026.pdf"),
    (B, "table", "How much are punctal plugs?", ["£95"], "price-list-2026.pdf"),
]

# Two turns: (company, first question, follow-up, facts of the follow-up, document, kind)
# kind "dependent": the follow-up needs the first turn; "standalone": it must be answered on its own.
TWO_TURN = [
    (B, "What do progressive lenses cost?", "And for children?", ["£95"], "price-list-2026.pdf", "dependent"),
    (C, "What do progressive lenses cost?", "And for children?", ["£140"], "price-list-2026.md", "dependent"),
    (B, "How much is anti-reflective coating?", "What about the blue light filter?", ["£40"],
     "price-list-2026.pdf", "dependent"),
    (C, "How much is anti-reflective coating?", "What about the blue light filter?", ["£55"],
     "price-list-2026.md", "dependent"),
    (B, "What is the monthly fee for MiSight 1 day?", "And for orthokeratology?", ["£60"],
     "myopia-control-children.md", "dependent"),
    (C, "How long is the frame warranty?", "And how long is the returns window?", ["60 days"],
     "warranty-and-aftercare-policy.pdf", "dependent"),
    (B, "How much is anti-reflective coating?", "What is the no-show fee?", ["£15"],
     "appointments-and-cancellations.md", "standalone"),
    (C, "What do progressive lenses cost?", "What is the contact lens trial fee?", ["£45"],
     "contact-lens-services.md", "standalone"),
    (B, "What is the no-show fee?", "Where do we refer suspected glaucoma?", ["Harrow Vale General Hospital"],
     "glaucoma-diabetic-referral-protocol.txt", "standalone"),
    (C, "How much is a dry eye assessment?", "What is our main phone number?", ["01632 960772"],
     "locations-and-opening-hours.md", "standalone"),
    (B, "How much is anti-reflective coating?", "Who won the football last night?", [], "", "standalone-off-topic"),
    (C, "What do progressive lenses cost?", "What's the weather going to be like tomorrow?", [], "",
     "standalone-off-topic"),
]

UNANSWERABLE = [
    (B, "Do you do home visits?"),
    (C, "Do we offer laser eye surgery?"),
    (B, "Can patients pay with cryptocurrency?"),
    (C, "Do we sell hearing aids?"),
    (B, "What is the practice's Wi-Fi password?"),
    (C, "How many staff car parking spaces does Northgate have?"),
    (B, "What is the staff Christmas party budget?"),
    (C, "Does the practice offer cataract surgery?"),
]

OFF_TOPIC = [
    (B, "Who won the football last night?"),
    (C, "Who won the football last night?"),
    (B, "What's the capital of Australia?"),
    (C, "Can you recommend a good pizza place?"),
    (B, "Write me a poem about the sea."),
    (C, "What is the weather forecast for tomorrow?"),
    (B, "How do I reset my router?"),
    (C, "Who is the prime minister?"),
    (B, "What's a good recipe for banana bread?"),
    (C, "How many goals did England score in the World Cup final?"),
]


def rows() -> list[dict]:
    out: list[dict] = []
    for company, kind, question, facts, document in SINGLE:
        out.append({"company": company, "type": kind, "question": question, "facts": facts, "document": document})
    for company, first, question, facts, document, kind in TWO_TURN:
        out.append({"company": company, "type": "follow-up", "history": [first], "question": question,
                    "follow_up": kind.split("-")[0], "facts": facts, "document": document or None,
                    "abstain": kind == "standalone-off-topic"})
    for company, question in UNANSWERABLE:
        out.append({"company": company, "type": "unanswerable", "question": question, "facts": [], "document": None,
                    "abstain": True})
    for company, question in OFF_TOPIC:
        out.append({"company": company, "type": "off-topic", "question": question, "facts": [], "document": None,
                    "abstain": True})
    for number, row in enumerate(out, start=1):
        row["id"] = f"a{number:03d}"
        row.setdefault("abstain", False)
        row.setdefault("history", [])
    return out


if __name__ == "__main__":
    path = Path(__file__).with_name("questions.jsonl")
    with path.open("w", encoding="utf-8") as handle:
        for row in rows():
            ordered = {k: row[k] for k in ("id", "company", "type", "question", "history", "facts", "document",
                                           "abstain") if k in row}
            if "follow_up" in row:
                ordered["follow_up"] = row["follow_up"]
            handle.write(json.dumps(ordered, ensure_ascii=False) + "\n")
    print(f"{path}: {len(rows())} questions")
