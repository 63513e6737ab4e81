from twisted.application.service import ServiceMaker

mtaserver = ServiceMaker(
    "mtaserver", "mtaserver.tap", "A high-volume mail transfer agent", "mtaserver"
)
