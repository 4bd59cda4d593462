package udptun

import (
	"fmt"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

// openTUN makes the non-persistent TUN device name (IFF_TUN|IFF_NO_PI:
// bare IP packets) in the calling thread's network namespace and returns
// it non-blocking, on the runtime's poller.
func openTUN(name string) (*os.File, error) {
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err != nil {
		return nil, fmt.Errorf("open /dev/net/tun: %w", err)
	}
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("tun %s: %w", name, err)
	}
	ifr.SetUint16(unix.IFF_TUN | unix.IFF_NO_PI)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("create tun %s: %w", name, err)
	}
	if got := ifr.Name(); got != name {
		unix.Close(fd)
		return nil, fmt.Errorf("create tun %s: the kernel named it %s", name, got)
	}
	return os.NewFile(uintptr(fd), "/dev/net/tun:"+name), nil
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
