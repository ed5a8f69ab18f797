"""An aiosmtpd handler for the tests: stores each message exactly as received (bytes of the
DATA phase) in DIR/new/, and can refuse the first N messages with a given SMTP reply.

    python3 -m aiosmtpd -n -l HOST:PORT -c smtp_sink.Sink DIR [N [REPLY]]
(with this folder on PYTHONPATH)."""

import os
import time


class Sink:
    def __init__(self, directory, fail_first="0", reply="451 4.3.0 Try again later"):
        self.directory = directory
        self.fail_first = int(fail_first)
        self.reply = reply
        self.seen = 0
        for sub in ("new", "tmp"):
            os.makedirs(os.path.join(directory, sub), exist_ok=True)

    @classmethod
    def from_cli(cls, parser, *args):
        return cls(*args)

    async def handle_DATA(self, server, session, envelope):
        self.seen += 1
        if self.seen <= self.fail_first:
            return self.reply
        name = f"{time.time_ns()}.{self.seen}.eml"
        tmp = os.path.join(self.directory, "tmp", name)
        with open(tmp, "wb") as f:
            f.write(envelope.original_content)
        os.rename(tmp, os.path.join(self.directory, "new", name))
        return "250 2.0.0 OK"
