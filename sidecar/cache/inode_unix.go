//go:build unix

package cache

import (
	"os"
	"syscall"
)

// inode identifies a file, so that a cache entry replaced by another
// process is hashed again.
func inode(st os.FileInfo) uint64 {
	if s, ok := st.Sys().(*syscall.Stat_t); ok {
		return uint64(s.Ino)
	}
	return 0
}

// ownedByMe reports whether this process's user owns st's file.
func ownedByMe(st os.FileInfo) bool {
	s, ok := st.Sys().(*syscall.Stat_t)
	return ok && int(s.Uid) == os.Geteuid()
}
