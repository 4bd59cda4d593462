package udptun

import (
	"fmt"
	"unsafe"

	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/tun"
)

// openTUN makes the non-persistent TUN device name in the calling
// thread's network namespace, with a virtio-net header on each packet
// (IFF_VNET_HDR), and hands it to wireguard-go's TUN code, which turns on
// the kernel's TCP (and, where offered, UDP) segmentation offloads: a
// read then returns a whole TCP burst of up to 64 KiB, split into
// MTU-sized packets in userspace without a syscall each, and a write
// coalesces consecutive packets of one flow into one (GRO), so a bulk
// transfer crosses the TUN in a few syscalls per 64 KiB instead of one a
// packet. Packets on the wire stay one IP packet per datagram, as
// upstream's. The device is "unmonitored": no netlink listener, no
// events; the dataplane watches the link.
func openTUN(name string) (tun.Device, error) {
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open /dev/net/tun: %w", err)
	}
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("tun %s: %w", name, err)
	}
	ifr.SetUint16(unix.IFF_TUN | unix.IFF_NO_PI | unix.IFF_VNET_HDR)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("create tun %s: %w", name, err)
	}
	if got := ifr.Name(); got != name {
		unix.Close(fd)
		return nil, fmt.Errorf("create tun %s: the kernel named it %s", name, got)
	}
	dev, _, err := tun.CreateUnmonitoredTUNFromFD(fd)
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("tun %s: %w", name, err)
	}
	return dev, nil
}

// mmsghdr is struct mmsghdr (x/sys/unix has no recvmmsg/sendmmsg
// wrappers): a msghdr and the byte count the kernel fills in.
type mmsghdr struct {
	hdr unix.Msghdr
	n   uint32
	_   [4]byte
}

// mmsg calls recvmmsg(2) or sendmmsg(2) (trap) on fd with hs, returning
// how many messages went through.
func mmsg(trap uintptr, fd uintptr, hs []mmsghdr, flags int) (int, unix.Errno) {
	r, _, e := unix.Syscall6(trap, fd, uintptr(unsafe.Pointer(&hs[0])), uintptr(len(hs)), uintptr(flags), 0, 0)
	return int(r), e
}
