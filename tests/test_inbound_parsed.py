"""Mailgun's "fully parsed" fields of received messages: bodies, quotes and signatures,
attachments, charsets, headers, and malformed mail that must not make the parser raise."""

from __future__ import annotations

import base64
import random
import time

import orjson
import pytest

from mta.inbound.parsed import (
    Attachment,
    Parsed,
    decode_bytes,
    decode_header_value,
    extract_reply,
    html_to_text,
    parse_message,
    strip_html_quotes,
)


def crlf(text: str, charset: str = "utf-8") -> bytes:
    """A message written with LF in the test, as it arrives over SMTP (CRLF)."""
    return text.replace("\n", "\r\n").encode(charset)


def headers_of(parsed: Parsed) -> list[list[str]]:
    return orjson.loads(parsed.fields["message-headers"])


# -- plain text ---------------------------------------------------------------------------------

PLAIN = crlf("""\
Received: from mail.example.org (mail.example.org [192.0.2.10])
\tby mx.example.com with ESMTPS id 4F2A1;
\tFri, 26 Apr 2013 11:50:00 +0000
Received: from [10.0.0.2] by mail.example.org; Fri, 26 Apr 2013 11:49:58 +0000
MIME-Version: 1.0
From: Bob <bob@example.org>
To: Alice <alice@example.com>
Subject: Re: Sample POST request
Message-ID: <517ACC75.5010709@example.org>
Date: Fri, 26 Apr 2013 11:50:00 -0700
Content-Type: text/plain; charset=us-ascii
Content-Transfer-Encoding: 7bit

Hi Alice,

This is Bob.

I also attached a file.

Thanks,
Bob

On 04/26/2013 11:29 AM, Alice wrote:
> Hi Bob,
>
> This is Alice. How are you doing?
>
> Thanks,
> Alice
""")


def test_plain_text_message_fields():
    fields = parse_message(PLAIN).fields
    assert fields["from"] == "Bob <bob@example.org>"
    assert fields["subject"] == "Re: Sample POST request"
    assert fields["body-plain"].startswith("Hi Alice,\r\n\r\nThis is Bob.\r\n")
    assert fields["body-plain"].endswith("> Thanks,\r\n> Alice\r\n")
    # Mailgun's own sample: the closing and name are the signature, the quote goes
    assert fields["stripped-text"] == "Hi Alice,\r\n\r\nThis is Bob.\r\n\r\nI also attached a file."
    assert fields["stripped-signature"] == "Thanks,\r\nBob"
    assert fields["attachment-count"] == "0"
    assert fields["content-id-map"] == "{}"
    assert "body-html" not in fields and "stripped-html" not in fields


def test_every_header_is_a_field_with_mailgun_spelling():
    fields = parse_message(PLAIN).fields
    assert fields["From"] == "Bob <bob@example.org>"
    assert fields["To"] == "Alice <alice@example.com>"
    assert fields["Subject"] == "Re: Sample POST request"
    assert fields["Message-Id"] == "<517ACC75.5010709@example.org>"
    assert fields["Mime-Version"] == "1.0"
    assert fields["Content-Type"] == "text/plain; charset=us-ascii"
    # a repeated header: the field keeps the last one, message-headers keeps all
    assert fields["Received"].startswith("from [10.0.0.2]")


def test_message_headers_keep_order_repeats_and_unfold():
    parsed = parse_message(PLAIN)
    names = [name for name, _ in headers_of(parsed)]
    assert names == [
        "Received", "Received", "Mime-Version", "From", "To", "Subject", "Message-Id", "Date",
        "Content-Type", "Content-Transfer-Encoding",
    ]
    first = headers_of(parsed)[0][1]
    assert first == (
        "from mail.example.org (mail.example.org [192.0.2.10])\tby mx.example.com with ESMTPS"
        " id 4F2A1;\tFri, 26 Apr 2013 11:50:00 +0000"
    )
    assert [list(h) for h in parsed.headers] == headers_of(parsed)


def test_lf_line_ends_work_too():
    fields = parse_message(PLAIN.replace(b"\r\n", b"\n")).fields
    assert fields["subject"] == "Re: Sample POST request"
    assert fields["stripped-text"] == "Hi Alice,\n\nThis is Bob.\n\nI also attached a file."
    assert fields["stripped-signature"] == "Thanks,\nBob"


# -- text and HTML ------------------------------------------------------------------------------

ALTERNATIVE = crlf("""\
From: "Carol Example" <carol@example.net>
To: dave@example.com
Subject: Lunch on Friday?
MIME-Version: 1.0
Content-Type: multipart/alternative; boundary="000000000000a1b2c3"

--000000000000a1b2c3
Content-Type: text/plain; charset="UTF-8"
Content-Transfer-Encoding: quoted-printable

Hi Dave,

Lunch at the caf=C3=A9 on Friday at noon?

Carol

--000000000000a1b2c3
Content-Type: text/html; charset="UTF-8"
Content-Transfer-Encoding: quoted-printable

<div dir=3D"ltr">Hi Dave,<div><br></div><div>Lunch at the caf=C3=A9 on Frida=
y at noon?</div><div><br></div><div>Carol</div></div>

--000000000000a1b2c3--
""")


def test_alternative_text_and_html():
    fields = parse_message(ALTERNATIVE).fields
    assert fields["body-plain"] == "Hi Dave,\r\n\r\nLunch at the café on Friday at noon?\r\n\r\nCarol\r\n"
    assert fields["body-html"] == (
        '<div dir="ltr">Hi Dave,<div><br></div><div>Lunch at the café on Friday at noon?</div>'
        "<div><br></div><div>Carol</div></div>\r\n"
    )
    assert fields["stripped-html"] == fields["body-html"]
    assert fields["stripped-text"] == "Hi Dave,\r\n\r\nLunch at the café on Friday at noon?\r\n\r\nCarol"
    assert fields["stripped-signature"] == ""
    assert fields["from"] == '"Carol Example" <carol@example.net>'
    assert fields["attachment-count"] == "0"


HTML_ONLY = crlf("""\
From: newsletter@shop.example
To: erin@example.com
Subject: Your order has shipped
MIME-Version: 1.0
Content-Type: text/html; charset=utf-8

<!DOCTYPE html>
<html><head><title>Shipped</title>
<style>p { color: #333; }</style><script>var tracking = "<b>no</b>";</script></head>
<body>
<!-- preheader --><div style="display:none">&zwnj;&nbsp;&zwnj;</div>
<h1>Good news,   Erin!</h1>
<p>Your order <b>#1234</b> is on its way.
Track it <a href="https://shop.example/track/1234">on our website</a>.</p>
<ul><li>Tea &amp; biscuits</li><li>Caf&eacute; beans &ndash; 1&nbsp;kg</li></ul>
<table><tr><td>Total</td><td>&euro;25.00</td></tr></table>
<p>Questions?<br>Reply to this email.</p>
</body></html>
""")


def test_html_only_message_gets_a_text_rendition():
    fields = parse_message(HTML_ONLY).fields
    assert fields["body-plain"] == (
        "Good news, Erin!\n\n"
        "Your order #1234 is on its way. Track it on our website.\n\n"
        "- Tea & biscuits\n"
        "- Café beans – 1 kg\n\n"
        "Total €25.00\n\n"
        "Questions?\n"
        "Reply to this email."
    )
    assert "on our website" in fields["stripped-text"]
    assert fields["body-html"].startswith("<!DOCTYPE html>")
    assert "tracking" not in fields["body-plain"] and "Shipped" not in fields["body-plain"]


@pytest.mark.parametrize(
    ("html", "text"),
    [
        ("<p>one</p><p>two</p>", "one\n\ntwo"),
        ("a<br>b<br><br>c", "a\nb\n\nc"),
        ('see <a href="https://x.example/">the   docs</a>, please', "see the docs, please"),
        ("<pre>\n  indented\n    more</pre>after", "  indented\n    more\n\nafter"),
        ("5 &lt; 6 &amp;&amp; 7 &gt; 6 &#x263A; &#9731;", "5 < 6 && 7 > 6 ☺ ☃"),
        ("<div>a<div>b</div></div>c", "a\nb\nc"),
        ("x < y and <b>bold</b>", "x < y and bold"),
        ('<img src="x.png" alt="logo">text', "text"),
        ('<a title="1 > 0">quoted &gt; in attribute</a>', "quoted > in attribute"),
        ("<textarea><b>raw</b></textarea>after", "after"),
        ("", ""),
    ],
)
def test_html_to_text(html: str, text: str):
    assert html_to_text(html) == text


# -- quotes and signatures ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "stripped", "signature"),
    [
        # Gmail: the attribution wrapped over two lines
        (
            "Sounds good, see you there.\n\nOn Mon, Mar 4, 2024 at 9:15 AM Frank Miller <\n"
            "frank@example.com> wrote:\n\n> Shall we meet at 10?\n>\n> Frank\n",
            "Sounds good, see you there.",
            "",
        ),
        # RFC 3676 signature delimiter
        (
            "The build is green again.\n\n-- \nGrace Hopper\nCompiler team\n",
            "The build is green again.",
            "-- \nGrace Hopper\nCompiler team",
        ),
        # a mobile trailer, after a closing
        ("Yes!\n\nThanks,\nHeidi\n\nSent from my iPhone\n", "Yes!", "Thanks,\nHeidi\n\nSent from my iPhone"),
        ("On my way.\n\nSent from my iPhone", "On my way.", "Sent from my iPhone"),
        # Outlook top-posting: everything from the splitter on is the old message
        (
            "Approved.\n\n-----Original Message-----\nFrom: Ivan <ivan@example.com>\n"
            "Sent: Tuesday, May 7, 2024 10:02 AM\nTo: Judy <judy@example.com>\n"
            "Subject: Budget\n\nPlease approve the budget.\n",
            "Approved.",
            "",
        ),
        (
            "Forwarding this.\n\n________________________________\nFrom: Ivan <ivan@example.com>\n"
            "Sent: Tuesday, May 7, 2024 10:02 AM\nTo: Judy\nSubject: Budget\n\nOld text.\n",
            "Forwarding this.",
            "",
        ),
        (
            "FYI\n\n---------- Forwarded message ---------\nFrom: Ken <ken@example.com>\n"
            "Date: Wed, May 8, 2024\nSubject: Notes\n\nThe notes.\n",
            "FYI",
            "",
        ),
        # inline reply: quoted lines go, the answers between them stay
        (
            "> Can you come?\nYes.\n> At 6?\nMake it 7.\n",
            "Yes.\nMake it 7.",
            "",
        ),
        # a closing that is the whole message is no signature, nor one before a question
        ("Thanks!\n", "Thanks!", ""),
        ("Got it.\n\nThanks!\nCan you send the file too?\n", "Got it.\n\nThanks!\nCan you send the file too?", ""),
        # "On ... wrote:" inside running text without a date or address is text
        (
            "On reflection, here is what I wrote:\nthe plan stands.\n",
            "On reflection, here is what I wrote:\nthe plan stands.",
            "",
        ),
        # a long block after "--" is no signature
        ("a\n--\n" + "line\n" * 20, "a\n--\n" + "\n".join(["line"] * 20), ""),
        ("", "", ""),
    ],
)
def test_extract_reply(body: str, stripped: str, signature: str):
    assert extract_reply(body) == (stripped, signature)


HTML_REPLY = crlf("""\
From: Linda <linda@example.com>
To: Mallory <mallory@example.org>
Subject: Re: Invoice 42
MIME-Version: 1.0
Content-Type: multipart/alternative; boundary="b1"

--b1
Content-Type: text/plain; charset=utf-8

Paid this morning.

On Thu, 9 May 2024 at 08:00, Mallory <mallory@example.org> wrote:
> Invoice 42 is due.

--b1
Content-Type: text/html; charset=utf-8

<html><body><div dir="ltr">Paid this morning.</div><br><div class="gmail_quote"><div dir="ltr" class="gmail_attr">On Thu, 9 May 2024 at 08:00, Mallory &lt;<a href="mailto:mallory@example.org">mallory@example.org</a>&gt; wrote:<br></div><blockquote class="gmail_quote" style="margin:0px 0px 0px 0.8ex;border-left:1px solid rgb(204,204,204)"><div dir="ltr">Invoice 42 is due.<div>Nested <div>div</div></div></div></blockquote></div></body></html>

--b1--
""")


def test_html_reply_stripped_html_drops_the_quote():
    fields = parse_message(HTML_REPLY).fields
    assert fields["stripped-html"] == (
        '<html><body><div dir="ltr">Paid this morning.</div><br></body></html>\r\n'
    )
    assert fields["stripped-text"] == "Paid this morning."


@pytest.mark.parametrize(
    ("html", "stripped"),
    [
        (
            '<p>Agreed.</p><blockquote type="cite">On 1 May, X wrote:<blockquote>old</blockquote>'
            "still old</blockquote><p>PS</p>",
            "<p>Agreed.</p><p>PS</p>",
        ),
        (
            '<div>Yes</div><div class="moz-cite-prefix">On 1/5/24 X wrote:<br></div>'
            "<blockquote type=cite>old</blockquote>",
            "<div>Yes</div>",
        ),
        (
            '<div>Ok</div><div class="yahoo_quoted"><div>old <div>nested</div></div></div>',
            "<div>Ok</div>",
        ),
        (
            '<html><body><div>Reply</div><div id="appendonsend"></div><hr><div id="divRplyFwdMsg">'
            "<b>From:</b> X</div><div>old message</div></body></html>",
            "<html><body><div>Reply</div></body></html>",
        ),
        ("<p>No quotes</p>", "<p>No quotes</p>"),
        ("<p>open <blockquote>never closed", "<p>open "),
    ],
)
def test_strip_html_quotes(html: str, stripped: str):
    assert strip_html_quotes(html) == stripped


def test_html_only_reply_strips_from_the_html():
    mime = crlf("""\
From: a@example.com
Subject: Re: hi
Content-Type: text/html; charset=utf-8

<p>New text</p><p>Best regards,<br>Nina</p><blockquote>Old text</blockquote>
""")
    fields = parse_message(mime).fields
    assert fields["body-plain"] == "New text\n\nBest regards,\nNina\n\nOld text"
    assert fields["stripped-text"] == "New text"
    assert fields["stripped-signature"] == "Best regards,\nNina"


# -- attachments --------------------------------------------------------------------------------

PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)
PDF = b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog >>\nendobj\n%%EOF\n"
PNG_B64 = base64.encodebytes(PNG).decode()
PDF_B64 = base64.encodebytes(PDF).decode()

ATTACHMENTS = crlf(f"""\
From: Oscar <oscar@example.com>
To: peggy@example.com
Subject: Photos and the contract
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary="outer"

--outer
Content-Type: multipart/related; boundary="rel"

--rel
Content-Type: multipart/alternative; boundary="alt"

--alt
Content-Type: text/plain; charset=utf-8

See the logo below and the contract attached.

--alt
Content-Type: text/html; charset=utf-8

<p>See the logo <img src="cid:logo.123@example.com"> and the contract attached.</p>

--alt--

--rel
Content-Type: image/png; name="logo.png"
Content-Disposition: inline; filename="logo.png"
Content-ID: <logo.123@example.com>
Content-Transfer-Encoding: base64

{PNG_B64}
--rel--

--outer
Content-Type: application/pdf; name*=utf-8''Vertr%C3%A4ge%202024.pdf
Content-Disposition: attachment; filename*=utf-8''Vertr%C3%A4ge%202024.pdf
Content-Transfer-Encoding: base64

{PDF_B64}
--outer
Content-Type: text/csv; charset=utf-8; name="=?utf-8?B?0L7RgtGH0ZHRgi5jc3Y=?="
Content-Disposition: attachment; filename="=?utf-8?B?0L7RgtGH0ZHRgi5jc3Y=?="
Content-Transfer-Encoding: quoted-printable

name,amount
Z=C3=BCrich,12.50
a very long line that is soft-broken by the quoted-printable encoding here=
 and goes on

--outer
Content-Type: application/octet-stream
Content-Disposition: attachment; filename="../../etc/passwd"

root:x:0:0
--outer--
""")


def test_attachments_are_numbered_decoded_and_named():
    parsed = parse_message(ATTACHMENTS)
    assert parsed.fields["attachment-count"] == "4"
    logo, contract, csv, sneaky = parsed.attachments
    assert logo == Attachment("logo.png", "image/png", PNG, "<logo.123@example.com>")
    assert contract == Attachment("Verträge 2024.pdf", "application/pdf", PDF, None)
    assert csv.filename == "отчёт.csv"
    assert csv.content_type == "text/csv"
    assert csv.data == (
        "name,amount\r\nZürich,12.50\r\na very long line that is soft-broken by the"
        " quoted-printable encoding here and goes on\r\n"
    ).encode()
    assert sneaky.filename == "passwd"
    assert sneaky.data == b"root:x:0:0"


def test_content_id_map_and_bodies_beside_attachments():
    fields = parse_message(ATTACHMENTS).fields
    assert orjson.loads(fields["content-id-map"]) == {"<logo.123@example.com>": "attachment-1"}
    assert fields["body-plain"] == "See the logo below and the contract attached.\r\n"
    assert fields["body-html"].startswith('<p>See the logo <img src="cid:logo.123@example.com">')
    assert "body-csv" not in fields  # a text part with a file name is an attachment


def test_inline_image_without_a_name_and_raw_utf8_file_name():
    mime = (
        b"From: a@example.com\r\nSubject: pics\r\n"
        b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n'
        b"--b\r\nContent-Type: text/plain\r\n\r\nhello\r\n"
        b"--b\r\nContent-Type: image/png\r\nContent-ID: <nameless>\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\n" + PNG_B64.encode() + b"\r\n"
        b'--b\r\nContent-Type: application/pdf\r\nContent-Disposition: attachment; filename="r\xc3\xa9sum\xc3\xa9.pdf"\r\n'
        b"\r\n%PDF\r\n--b--\r\n"
    )
    parsed = parse_message(mime)
    image, resume = parsed.attachments
    assert image.filename == "attachment-1.png"
    assert image.data == PNG
    assert resume.filename == "résumé.pdf"
    assert orjson.loads(parsed.fields["content-id-map"]) == {"<nameless>": "attachment-1"}


def test_forwarded_message_is_an_attachment():
    mime = crlf("""\
From: a@example.com
Subject: Fwd: old
Content-Type: multipart/mixed; boundary="b"

--b
Content-Type: text/plain

See below.
--b
Content-Type: message/rfc822

From: old@example.com
Subject: old

the old body
--b--
""")
    parsed = parse_message(mime)
    assert parsed.fields["body-plain"] == "See below."
    (message,) = parsed.attachments
    assert message.content_type == "message/rfc822"
    assert message.filename == "attachment-1.eml"
    assert b"Subject: old" in message.data and b"the old body" in message.data


# -- charsets and encoded words -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("charset", "text"),
    [
        ("ISO-8859-1", "Grüße aus Köln, ça va?"),
        ("windows-1252", "“Smart quotes” — and €5"),
        ("iso-8859-1", "Mislabelled “cp1252” quotes"),  # browsers read latin-1 as cp1252
        ("Shift_JIS", "こんにちは、世界。日本語のメールです。"),
        ("KOI8-R", "Привет, мир! Это письмо."),
        ("GB2312", "你好，世界"),
        ("ISO-2022-JP", "会議は明日です"),
    ],
)
def test_bodies_are_transcoded_from_their_charset(charset: str, text: str):
    encoding = "cp1252" if charset == "iso-8859-1" else charset
    mime = (
        b"From: a@example.com\r\nSubject: charset\r\nMIME-Version: 1.0\r\n"
        b"Content-Type: text/plain; charset=" + charset.encode() + b"\r\n"
        b"Content-Transfer-Encoding: 8bit\r\n\r\n" + text.encode(encoding) + b"\r\n"
    )
    assert parse_message(mime).fields["body-plain"] == text + "\r\n"


def test_base64_body_in_a_legacy_charset():
    body = base64.encodebytes("Съешь же ещё этих мягких французских булок".encode("koi8-r"))
    mime = (
        b"From: a@example.com\r\nSubject: koi\r\n"
        b'Content-Type: multipart/alternative; boundary="b"\r\n\r\n'
        b'--b\r\nContent-Type: text/plain; charset="koi8-r"\r\nContent-Transfer-Encoding: base64\r\n\r\n'
        + body
        + b"--b\r\nContent-Type: text/html; charset=windows-1251\r\n\r\n<p>"
        + "Привет".encode("cp1251")
        + b"</p>\r\n--b--\r\n"
    )
    fields = parse_message(mime).fields
    assert fields["body-plain"] == "Съешь же ещё этих мягких французских булок"
    assert fields["body-html"] == "<p>Привет</p>"  # the last line end belongs to the boundary


def test_html_charset_from_meta_when_the_header_has_none():
    mime = (
        b"From: a@example.com\r\nSubject: meta\r\nContent-Type: text/html\r\n\r\n"
        b'<html><head><meta http-equiv="Content-Type" content="text/html; charset=koi8-r"></head>'
        b"<body>" + "Здравствуйте".encode("koi8-r") + b"</body></html>"
    )
    assert parse_message(mime).fields["body-plain"] == "Здравствуйте"


def test_encoded_subject_and_from():
    mime = crlf("""\
From: =?UTF-8?Q?J=C3=BCrgen_M=C3=BCller?= <juergen@example.de>
To: =?ISO-8859-1?Q?Fran=E7ois?= <francois@example.fr>, plain@example.com
Subject: =?UTF-8?B?8J+OiSBQYXJ0eSBpbiBNw7xuY2hlbg==?=
 =?UTF-8?B?IOKAlCBqZXR6dCE=?=
Cc: =?koi8-r?B?8NLJ18XU?= <privet@example.ru>
Content-Type: text/plain

hi
""")
    fields = parse_message(mime).fields
    assert fields["from"] == "Jürgen Müller <juergen@example.de>"
    assert fields["From"] == fields["from"]
    assert fields["To"] == "François <francois@example.fr>, plain@example.com"
    assert fields["subject"] == "🎉 Party in München — jetzt!"
    assert fields["Cc"] == "Привет <privet@example.ru>"
    assert ["Subject", "🎉 Party in München — jetzt!"] in orjson.loads(fields["message-headers"])


@pytest.mark.parametrize(
    ("raw", "decoded"),
    [
        ("=?utf-8?q?caf=C3=A9?= au lait", "café au lait"),
        ("=?utf-8?q?a?= =?utf-8?q?b?=", "ab"),  # whitespace between encoded words goes
        ("=?utf-8?q?a?= b =?utf-8?q?c?=", "a b c"),
        ("=?utf-8?q?two_words?=", "two words"),
        # a multi-byte character split over two words (seen from some mailers)
        ("=?utf-8?B?5pel?= =?utf-8?B?5pys?=", "日本"),
        ("=?utf-8?B?5pc=?= =?utf-8?B?peacrA==?=", "日本"),
        ("=?ISO-2022-JP?B?GyRCJEMkRiQ3JCsbKEI=?=", "ってしか"),
        ("=?utf-8*en?q?lang_tag?=", "lang tag"),
        ("=?x-unknown?q?caf=C3=A9?=", "café"),  # unknown charset: UTF-8 if it decodes
        ("=?utf-8?B?not base64!?=", "=?utf-8?B?not base64!?="),  # malformed: left as is
        ("=?utf-8?B?w6k?=", "é"),  # padding missing
        ("=?utf-8?Q?unterminated", "=?utf-8?Q?unterminated"),
        ("plain\r\n continued", "plain continued"),
        ("Ünicode ráw", "Ünicode ráw"),
    ],
)
def test_decode_header_value(raw: str, decoded: str):
    assert decode_header_value(raw) == decoded


def test_raw_8bit_headers_are_read_as_utf8_or_latin1():
    mime = (
        b"From: Ren\xc3\xa9e <renee@example.com>\r\nSubject: Caf\xe9 cr\xe8me\r\n\r\nbody\r\n"
    )
    fields = parse_message(mime).fields
    assert fields["from"] == "Renée <renee@example.com>"
    assert fields["subject"] == "Café crème"


@pytest.mark.parametrize(
    ("data", "charset", "text"),
    [
        ("é".encode(), "utf-8", "é"),
        ("é".encode(), "us-ascii", "é"),  # declared ASCII, sent UTF-8
        ("é".encode("latin-1"), None, "é"),
        ("é".encode(), "no-such-charset", "é"),
        (b"\x81\xe9", "no-such-charset", "\x81é"),  # latin-1 where windows-1252 has a hole
        ("日本".encode("shift_jis") + b"\x81", "shift_jis", "日本\ufffd"),  # a few bad bytes
        (b"abc", "base64", "abc"),  # a codec but no charset
        (b"\\u0041", "unicode_escape", "\\u0041"),
    ],
)
def test_decode_bytes_fallbacks(data: bytes, charset: str | None, text: str):
    assert decode_bytes(data, charset) == text


# -- other text parts ---------------------------------------------------------------------------

CALENDAR = crlf("""\
From: Quinn <quinn@example.com>
To: rita@example.com
Subject: Invitation: Planning @ Mon 10:00
MIME-Version: 1.0
Content-Type: multipart/alternative; boundary="cal"

--cal
Content-Type: text/plain; charset=utf-8

You are invited to Planning.
--cal
Content-Type: text/calendar; charset=utf-8; method=REQUEST

BEGIN:VCALENDAR
METHOD:REQUEST
BEGIN:VEVENT
SUMMARY:Planning
DTSTART:20240610T100000Z
END:VEVENT
END:VCALENDAR
--cal--
""")


def test_calendar_part_is_body_calendar():
    fields = parse_message(CALENDAR).fields
    assert fields["body-plain"] == "You are invited to Planning."
    assert fields["body-calendar"].startswith("BEGIN:VCALENDAR\r\nMETHOD:REQUEST\r\n")
    assert fields["attachment-count"] == "0"


def test_split_text_parts_are_joined():
    mime = crlf("""\
From: a@example.com
Subject: split
Content-Type: multipart/mixed; boundary="b"

--b
Content-Type: text/plain

Before the picture.
--b
Content-Type: image/png
Content-Disposition: inline

x
--b
Content-Type: text/plain

After the picture.
--b--
""")
    fields = parse_message(mime).fields
    assert fields["body-plain"] == "Before the picture.\nAfter the picture."
    assert fields["attachment-count"] == "1"


# -- malformed mail -----------------------------------------------------------------------------


def assert_complete(parsed: Parsed) -> None:
    for key in ("from", "subject", "body-plain", "stripped-text", "stripped-signature",
                "attachment-count", "message-headers", "content-id-map"):
        assert isinstance(parsed.fields[key], str)
    for value in parsed.fields.values():
        value.encode("utf-8")  # no lone surrogates
    orjson.loads(parsed.fields["message-headers"])


@pytest.mark.parametrize(
    "mime",
    [
        b"",
        b"\r\n",
        b"just some text without any headers\r\nsecond line\r\n",
        b"\x00\xff\xfe garbage \x80\x81",
        # missing end boundary
        crlf('Subject: x\nContent-Type: multipart/mixed; boundary="b"\n\n--b\nContent-Type: text/plain\n\nunfinished'),
        # boundary never appears
        crlf('Subject: x\nContent-Type: multipart/mixed; boundary="b"\n\nno parts at all\n'),
        # no boundary parameter
        crlf("Subject: x\nContent-Type: multipart/alternative\n\n--zz\nContent-Type: text/plain\n\nhi\n--zz--\n"),
        # bad base64, unknown charsets, bad transfer encoding
        crlf("Subject: x\nContent-Type: text/plain; charset=x-klingon\nContent-Transfer-Encoding: base64\n\n!!!not*base64@@@\n"),
        crlf("Subject: x\nContent-Type: text/html; charset=\"\"\nContent-Transfer-Encoding: x-weird\n\n<p>hi"),
        crlf("Subject: =?bogus?X?abc?= =?utf-8?B?====?=\nContent-Type: text/plain; charset=utf-7\n\n+AGE-\n"),
        crlf('Subject: x\nContent-Type: image/png; name=\nContent-Disposition: attachment; filename*=bad\'\'%ZZ%\nContent-Transfer-Encoding: base64\n\nA\n'),
        crlf("Subject: x\nContent-Type: message/rfc822\n\nnot: really\n\na message"),
        crlf("Subject: x\nContent-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: quoted-printable\n\n=ZZ=\n=C3"),
        crlf("From: <>\nTo: ,,,\nSubject:\nContent-Type: ;;;\nContent-Disposition: ;filename\n\nbody"),
        # header line without a colon, overlong header
        b"Subject: ok\r\nthis is not a header\r\nX-Long: " + b"a" * 100_000 + b"\r\n\r\nbody",
    ],
)
def test_malformed_mail_does_not_raise(mime: bytes):
    assert_complete(parse_message(mime))


@pytest.mark.parametrize("seed", range(150))
def test_mangled_samples_do_not_raise(seed: int):
    rng = random.Random(seed)
    mime = bytearray(rng.choice([PLAIN, ALTERNATIVE, HTML_ONLY, HTML_REPLY, ATTACHMENTS, CALENDAR]))
    for _ in range(rng.randrange(1, 20)):
        at = rng.randrange(len(mime) + 1)
        action = rng.randrange(3)
        if action == 0:
            del mime[at : at + rng.randrange(1, 200)]
        elif action == 1:
            mime[at:at] = rng.choice([b"\r\n", b"--", b"=?", b"<", b"\xff\xfe", b";", b'"', b"> "])
        else:
            mime[at : at + 1] = bytes([rng.randrange(256)])
    assert_complete(parse_message(bytes(mime)))


def test_bad_base64_attachment_keeps_what_decodes():
    mime = crlf("""\
Subject: x
Content-Type: multipart/mixed; boundary="b"

--b
Content-Type: text/plain

see attached
--b
Content-Type: application/pdf
Content-Disposition: attachment; filename="a.pdf"
Content-Transfer-Encoding: base64

JVBERi0x%%%LjQ
--b--
""")
    parsed = parse_message(mime)
    assert parsed.fields["body-plain"] == "see attached"
    assert parsed.attachments[0].filename == "a.pdf"
    assert parsed.attachments[0].data.startswith(b"%PDF-1")


def test_missing_end_boundary_still_gives_the_text():
    mime = crlf("""\
Subject: cut short
Content-Type: multipart/alternative; boundary="b"

--b
Content-Type: text/plain; charset=utf-8

The text arrived.
--b
Content-Type: text/html; charset=utf-8

<p>The html arrived
""")
    fields = parse_message(mime).fields
    assert fields["body-plain"] == "The text arrived."
    assert fields["body-html"].startswith("<p>The html arrived")


def test_headerless_message_is_all_body():
    fields = parse_message(b"Hello there,\r\nno headers here.\r\n").fields
    assert fields["body-plain"] == "Hello there,\r\nno headers here.\r\n"
    assert fields["from"] == "" and fields["subject"] == ""


def test_absurd_nesting_falls_back_to_text():
    deep = b"".join(
        b'Content-Type: multipart/mixed; boundary="b%d"\r\n\r\n--b%d\r\n' % (i, i) for i in range(3000)
    )
    parsed = parse_message(b"Subject: deep\r\n" + deep + b"Content-Type: text/plain\r\n\r\nbottom\r\n")
    assert_complete(parsed)
    assert parsed.fields["subject"] == "deep"


# -- bounded work -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "html",
    [
        "<a " * 300_000,  # html.parser rescans open tags to the end: minutes
        "<a x='" * 200_000,
        "<!--" * 300_000,
        "<" * 1_000_000,
        "</" * 500_000,
        "<div class=gmail_quote>" * 100_000,
        "<blockquote>" * 100_000 + "x" + "</blockquote>" * 100_000,
    ],
)
def test_pathological_html_is_linear(html: str):
    mime = b"Subject: x\r\nContent-Type: text/html\r\n\r\n" + html.encode()
    started = time.monotonic()
    assert_complete(parse_message(mime))
    assert time.monotonic() - started < 5


@pytest.mark.parametrize(
    "body",
    [
        "Begin forwarded message:\n\n" * 200_000,  # many splitters with blanks between
        "On Mon, 1 Jan 2024 at 10:00 x wrote\n" * 100_000,
        "> quoted\n" * 300_000,
    ],
)
def test_pathological_text_is_linear(body: str):
    started = time.monotonic()
    extract_reply(body)
    assert time.monotonic() - started < 5


def test_large_message_parses():
    attachment = base64.encodebytes(bytes(range(256)) * 40_000)  # 10 MB
    mime = (
        b'Subject: big\r\nContent-Type: multipart/mixed; boundary="b"\r\n\r\n'
        b"--b\r\nContent-Type: text/plain\r\n\r\n" + b"A line of text.\r\n" * 200_000
        + b"--b\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n"
        b'Content-Disposition: attachment; filename="big.bin"\r\n\r\n' + attachment + b"--b--\r\n"
    )
    started = time.monotonic()
    parsed = parse_message(mime)
    assert time.monotonic() - started < 10
    assert parsed.attachments[0].data == bytes(range(256)) * 40_000
    assert parsed.fields["body-plain"] == "\r\n".join(["A line of text."] * 200_000)
