package dataplane

import (
	"strconv"
	"strings"
)

// Offload is a device offload setting the dataplane enforces: OffloadAsIs
// (the zero value) leaves the device as the kernel made it.
type Offload uint8

// Offload settings.
const (
	OffloadAsIs Offload = iota
	OffloadOn
	OffloadOff
)

func (o Offload) String() string {
	switch o {
	case OffloadOn:
		return "on"
	case OffloadOff:
		return "off"
	}
	return "as-is"
}

// TxChecksumFeature is the ethtool feature (`ethtool -K <dev>
// tx-checksum-ip-generic off`) that makes a VXLAN device hand the inner
// packet's checksum to the layers below instead of computing it itself.
const TxChecksumFeature = "tx-checksum-ip-generic"

// TxChecksumBroken reports whether a kernel of this release (uname -r)
// corrupts VXLAN packets whose checksum is offloaded once netfilter NATs
// them: the source NAT of kube-proxy's masquerade (--random-fully) left the
// inner UDP/TCP checksum wrong, the peer dropped the packets, and
// connections to services stalled for 63 s (five SYN retransmissions;
// kubernetes#88986, calico#3145, flannel#1279, #1243). The fix ("netfilter:
// nat: never update the UDP checksum when it's 0") is in 5.7; like
// Calico (felix#2815) we call every earlier kernel affected, even the
// stable series that took the backport (5.6.13, 5.4.41, 4.19.123,
// 4.14.181): distributions' kernels carry their own numbering, and a
// checksum computed in software costs little next to a 63 s stall.
// A release that cannot be parsed is not called broken.
func TxChecksumBroken(release string) bool {
	major, minor, ok := kernelVersion(release)
	return ok && (major < 5 || major == 5 && minor < 7)
}

// kernelVersion parses "5.4.0-150-generic" → 5, 4.
func kernelVersion(release string) (major, minor int, ok bool) {
	parts := strings.SplitN(release, ".", 3)
	if len(parts) < 2 {
		return 0, 0, false
	}
	major, err := strconv.Atoi(parts[0])
	if err != nil {
		return 0, 0, false
	}
	end := 0
	for end < len(parts[1]) && parts[1][end] >= '0' && parts[1][end] <= '9' {
		end++
	}
	minor, err = strconv.Atoi(parts[1][:end])
	if err != nil {
		return 0, 0, false
	}
	return major, minor, true
}

// TxChecksumSetting resolves --vxlan-tx-checksum (auto, on, off) for a
// kernel release.
func TxChecksumSetting(setting, release string) Offload {
	switch setting {
	case "on":
		return OffloadOn
	case "off":
		return OffloadOff
	}
	if TxChecksumBroken(release) {
		return OffloadOff
	}
	return OffloadAsIs
}
