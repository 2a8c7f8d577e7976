// A fresh directory under $TMPDIR for one test, removed with its contents.
#ifndef QMGR_TESTS_SUPPORT_TEMP_DIR_H_
#define QMGR_TESTS_SUPPORT_TEMP_DIR_H_

#include <string>

namespace qmgr::testing {

class TempDir {
 public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

}  // namespace qmgr::testing

#endif  // QMGR_TESTS_SUPPORT_TEMP_DIR_H_
