"""The watch: rules over the events the service has sealed that raise cases of possibly
inappropriate access to patient records (restricted patients, relationships, after hours,
volume, break-glass, failed sign-ins, bulk exports), each stored once and recorded as a sealed
`audit.alert.raised` event of its organization."""
