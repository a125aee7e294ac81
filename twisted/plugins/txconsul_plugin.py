from twisted.application.service import ServiceMaker

txconsul = ServiceMaker("txconsul", "txconsul.tap", "A Consul-compatible agent.", "txconsul")
