//go:build !unix

package cache

import "os"

// inode is unknown here: the modification time stands in (a hit touches
// it, so entries are hashed again more often).
func inode(st os.FileInfo) uint64 { return uint64(st.ModTime().UnixNano()) }

// ownedByMe cannot tell here; folder modes mean little on these systems.
func ownedByMe(os.FileInfo) bool { return false }
