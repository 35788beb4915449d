// The whole public API of the Inferential C++ client.
#pragma once

#include "inferential/chunks.hpp"
#include "inferential/connection.hpp"
#include "inferential/control.hpp"
#include "inferential/envelope.hpp"
#include "inferential/errors.hpp"
#include "inferential/matching.hpp"
#include "inferential/options.hpp"
#include "inferential/reply.hpp"
#include "inferential/wire.hpp"
