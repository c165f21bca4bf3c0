"""A test seam for the email daemon, kept out of the product.

One system test starts this instead of /usr/bin/airut-email (a drop-in in the lab
guest). It is the real daemon, except that Mailbox.remove first pauses while
/run/airut-test/pause-remove exists (its content: seconds), so the test can kill -9
the daemon between the commit of a task and the removal of its message.
"""

import logging
import sys
import time
from pathlib import Path

from airut_ingest.email import daemon, mailbox

FLAG = Path("/run/airut-test/pause-remove")
_remove = mailbox.Mailbox.remove


def remove(self: mailbox.Mailbox, uid: int) -> None:
    if FLAG.exists():
        seconds = float(FLAG.read_text().strip() or 30)
        logging.getLogger("airut.email").info("pausing %s s between commit and removal (test)",
                                              seconds)
        time.sleep(seconds)
    _remove(self, uid)


mailbox.Mailbox.remove = remove

if __name__ == "__main__":
    daemon.main(sys.argv[1:])
