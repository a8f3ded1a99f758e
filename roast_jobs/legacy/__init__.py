"""The legacy queue: RoastMyPost's ``Job`` table as its poller saw it, and that poller."""
