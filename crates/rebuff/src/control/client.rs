//! The CLI side of the control socket.
